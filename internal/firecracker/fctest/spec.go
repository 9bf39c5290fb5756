// Package fctest is a test double for Firecracker: a fake firecracker
// program (cmd/fake-firecracker) and the helpers that tests use to build
// it and to check what the driver sent. It is never a cylo backend: it
// boots no guest, and runs cylo-agent as a host process where a guest
// would run it.
package fctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// SpecEnv names the environment variable that overrides the path of the
// Firecracker API definition (Swagger 2.0 YAML).
const SpecEnv = "CYLO_FIRECRACKER_SPEC"

// SpecFile is the Firecracker API definition the double validates against.
const SpecFile = "firecracker-v1.16.1.yaml"

// FindSpec returns the path of the API definition: $CYLO_FIRECRACKER_SPEC,
// else shared/firecracker/SpecFile beside the repository root (where CI
// puts a copy), else /work/shared/firecracker/SpecFile.
func FindSpec() (string, error) {
	if p := os.Getenv(SpecEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", SpecEnv, p, err)
		}
		return p, nil
	}
	var tried []string
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(filepath.Dir(root), "shared", "firecracker", SpecFile)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	p := filepath.Join("/work/shared/firecracker", SpecFile)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	tried = append(tried, p)
	return "", fmt.Errorf("firecracker API definition %s not found (tried %v): set %s to its path", SpecFile, tried, SpecEnv)
}

// RepoRoot returns the directory of the go.mod above the working
// directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Spec validates requests against the Firecracker API definition.
type Spec struct {
	Version string
	router  routers.Router
}

var (
	specOnce   sync.Once
	specCached *Spec
	specErr    error
)

// LoadSpec reads the Swagger 2.0 file at path, converts it to OpenAPI 3
// and prepares a request validator.
//
// Firecracker rejects unknown fields in every request body (its
// configuration structs deny them), while the definition leaves
// additionalProperties open. LoadSpec closes every object schema that
// lists properties and does not allow extra ones explicitly, so the
// double rejects what Firecracker rejects.
func LoadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read firecracker API definition: %w", err)
	}
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(data, &doc2); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("convert %s to OpenAPI 3: %w", path, err)
	}
	closed := make(map[*openapi3.Schema]bool)
	for _, ref := range doc3.Components.Schemas {
		closeObjects(ref, closed)
	}
	for _, rb := range doc3.Components.RequestBodies {
		for _, mt := range rb.Value.Content {
			closeObjects(mt.Schema, closed)
		}
	}
	for _, item := range doc3.Paths.Map() {
		for _, op := range item.Operations() {
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				for _, mt := range op.RequestBody.Value.Content {
					closeObjects(mt.Schema, closed)
				}
			}
		}
	}
	// Requests reach the socket with any host; match on the path alone.
	doc3.Servers = nil

	router, err := legacy.NewRouter(doc3)
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", path, err)
	}
	return &Spec{Version: doc2.Info.Version, router: router}, nil
}

func closeObjects(ref *openapi3.SchemaRef, seen map[*openapi3.Schema]bool) {
	if ref == nil || ref.Value == nil || seen[ref.Value] {
		return
	}
	s := ref.Value
	seen[s] = true
	if len(s.Properties) > 0 && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
		no := false
		s.AdditionalProperties.Has = &no
	}
	for _, p := range s.Properties {
		closeObjects(p, seen)
	}
	closeObjects(s.Items, seen)
}

// DefaultSpec loads the definition that FindSpec finds, once per process.
func DefaultSpec() (*Spec, error) {
	specOnce.Do(func() {
		path, err := FindSpec()
		if err != nil {
			specErr = err
			return
		}
		specCached, specErr = LoadSpec(path)
	})
	return specCached, specErr
}

// Validate checks one request's method, path, Content-Type and body
// against the definition. It returns nil for a valid request and an error
// that names the first violation otherwise.
func (s *Spec) Validate(ctx context.Context, method, path, contentType string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	input := &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: params,
		Route:      route,
		Options:    &openapi3filter.Options{MultiError: false},
	}
	if err := openapi3filter.ValidateRequest(ctx, input); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}
