// Package cli holds what meshca's commands share: reading a YAML config file into
// cobra flags, and building the process logger.
package cli

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// ApplyConfigFile reads a YAML file whose keys are flag names (`data-dir: /var/lib/x`)
// and sets every flag that was not given on the command line, so flags override the
// file and the file overrides defaults. Unknown keys, keys in skip, and values a flag
// cannot parse are errors that name the file and the key.
func ApplyConfigFile(path string, flags *pflag.FlagSet, skip ...string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("failed to read config file: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("config file %q is not valid YAML: %w", path, err)
	}
	for key, value := range doc {
		f := flags.Lookup(key)
		if f == nil || slices.Contains(skip, key) {
			return fmt.Errorf("config file %q: unknown key %q", path, key)
		}
		if f.Changed {
			continue
		}
		text, err := flagText(value)
		if err != nil {
			return fmt.Errorf("config file %q: key %q: %w", path, key, err)
		}
		if err := f.Value.Set(text); err != nil {
			return fmt.Errorf("config file %q: key %q: invalid value %q: %w", path, key, text, err)
		}
	}
	return nil
}

// flagText renders a YAML value the way it would be written on the command line.
func flagText(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			s, err := flagText(e)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, ","), nil
	case nil:
		return "", fmt.Errorf("value is empty")
	default:
		return "", fmt.Errorf("value of type %T is not supported", v)
	}
}
