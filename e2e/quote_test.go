package e2e

import (
	"encoding/json"
	"slices"
	"strings"
)

// pyString returns s as a Python string literal (JSON strings are valid
// Python literals for the characters used in these tests).
func pyString(s string) string { return jsonString(s) }

func jsonString(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

// pyKeys returns the keys of m as a Python list literal.
func pyKeys(m map[string]string) string {
	var keys []string
	for k := range m {
		keys = append(keys, jsonString(k))
	}
	slices.Sort(keys)
	return "[" + strings.Join(keys, ", ") + "]"
}
