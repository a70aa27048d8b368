package metrics_test

import (
	"os"
	"testing"

	"github.com/pushproxy/pushproxy/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
