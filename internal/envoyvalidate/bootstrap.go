package envoyvalidate

import (
	"encoding/json"
	"errors"
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// ErrDecode marks a bootstrap that does not decode: malformed YAML or JSON, a duplicate
// key, an unknown field, an Any of an unknown type, or a value of the wrong type.
var ErrDecode = errors.New("cannot decode bootstrap")

// LoadBootstrap decodes an Envoy bootstrap written in YAML or JSON and validates it with
// [Validate]. Decoding is strict, as Envoy's is for a bootstrap: duplicate keys, unknown
// fields and unknown extension types are refused (wrapped in [ErrDecode]). Validation
// failures come back as an [*Error]. On any error the bootstrap is nil.
//
// YAML is converted to JSON first, so the line and column in a decoding error of a YAML
// file point into that JSON form; the field or type it names is the useful part.
func LoadBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	js := data
	if !json.Valid(data) {
		var err error
		if js, err = yaml.YAMLToJSONStrict(data); err != nil {
			return nil, fmt.Errorf("envoyvalidate: %w: %w", ErrDecode, err)
		}
	}

	bs := &bootstrapv3.Bootstrap{}
	opts := protojson.UnmarshalOptions{DiscardUnknown: false}
	if err := opts.Unmarshal(js, bs); err != nil {
		return nil, fmt.Errorf("envoyvalidate: %w: %w", ErrDecode, err)
	}

	if err := Validate(bs); err != nil {
		return nil, err
	}
	return bs, nil
}
