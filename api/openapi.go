package api

import (
	_ "embed"
	"net/http"
)

// openAPIDoc (a string: immutable) is the API's OpenAPI 3 document (openapi.json); a test keeps
// its paths and the routes equal.
//
//go:embed openapi.json
var openAPIDoc string

// OpenAPI returns the OpenAPI 3 document the API serves.
func OpenAPI() []byte { return []byte(openAPIDoc) }

func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(openAPIDoc))
}
