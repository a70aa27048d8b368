package openapicheck

import "testing"

func TestDescriptionLoads(t *testing.T) {
	MustLoad(t)
}
