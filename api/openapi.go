package api

import (
	_ "embed"
	"net/http"
)

// openAPI is the OpenAPI 3.1 description of the device and admin APIs, checked against the
// router and the responses of the API tests (internal/openapicheck).
//
//go:embed openapi.yaml
var openAPI []byte

// OpenAPI returns the OpenAPI 3.1 description of the HTTP API (api/openapi.yaml), as
// GET /v1/openapi.yaml serves it.
func OpenAPI() []byte { return append([]byte(nil), openAPI...) }

// handleOpenAPI serves the description: public, like the routes it describes.
func handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(openAPI)
}
