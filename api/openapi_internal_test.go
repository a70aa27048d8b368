package api

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// TestOpenAPIProblemCodes: the problem codes api/openapi.yaml lists (ProblemCode's enum, and
// its x-status) are exactly the codes the API answers, with their statuses (statusOf).
func TestOpenAPIProblemCodes(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(openAPI)
	if err != nil {
		t.Fatal(err)
	}
	ref := doc.Components.Schemas["ProblemCode"]
	if ref == nil || ref.Value == nil {
		t.Fatal("api/openapi.yaml has no #/components/schemas/ProblemCode")
	}
	var listed []string
	for _, v := range ref.Value.Enum {
		listed = append(listed, v.(string))
	}
	slices.Sort(listed)
	codes := slices.Sorted(maps.Keys(statusOf))
	if !slices.Equal(listed, codes) {
		t.Errorf("ProblemCode's enum in api/openapi.yaml = %v\nthe API's codes (api/problem.go statusOf) = %v", listed, codes)
	}
	statuses, _ := ref.Value.Extensions["x-status"].(map[string]any)
	for code, status := range statusOf {
		got, _ := statuses[code].(float64)
		if int(got) != status {
			t.Errorf("ProblemCode x-status[%s] = %v in api/openapi.yaml, the API answers %d", code, statuses[code], status)
		}
	}
	if p := doc.Components.Schemas["Problem"].Value.Properties["type"].Value.Pattern; !strings.HasPrefix(p, "^"+ProblemTypePrefix) {
		t.Errorf("Problem.type's pattern %q does not start with %q", p, ProblemTypePrefix)
	}
}
