// Package deps pins the stack's modules in go.mod until the code that uses them lands. Temporary.
package deps

import (
	_ "firebase.google.com/go/v4/messaging"
	_ "github.com/go-chi/chi/v5"
	_ "github.com/jackc/pgx/v5"
	_ "github.com/jackc/tern/v2/migrate"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/sideshow/apns2"
	_ "go.uber.org/goleak"
	_ "golang.org/x/net/http2"
	_ "golang.org/x/time/rate"
)
