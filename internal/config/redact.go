package config

import (
	"net/url"
	"reflect"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Redacted is the text that replaces a secret.
const Redacted = "REDACTED"

// Redact returns a deep copy of *cfg (a pointer to a config struct)
// through its YAML form, with every field tagged redact:"secret" that is
// set replaced by REDACTED and every field tagged redact:"dsn" with its
// password masked. Unexported fields are not copied.
func Redact[T any](cfg *T) (T, error) {
	var out T
	var n yaml.Node
	if err := n.Encode(cfg); err != nil {
		return out, err
	}
	redactNode(&n, reflect.TypeFor[T]())
	err := n.Decode(&out)
	return out, err
}

func redactNode(n *yaml.Node, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := yamlName(f)
			if name == "" {
				continue
			}
			v := mapValue(n, name)
			if v == nil {
				continue
			}
			switch f.Tag.Get("redact") {
			case "secret":
				if v.Kind == yaml.ScalarNode && v.Value != "" {
					v.Value, v.Tag, v.Style = Redacted, "!!str", 0
				}
				if v.Kind == yaml.SequenceNode { // a list of secrets (webhooks[].secrets)
					for _, c := range v.Content {
						if c.Kind == yaml.ScalarNode && c.Value != "" {
							c.Value, c.Tag, c.Style = Redacted, "!!str", 0
						}
					}
				}
			case "dsn":
				if v.Kind == yaml.ScalarNode {
					v.Value = RedactDSN(v.Value)
				}
			default:
				redactNode(v, f.Type)
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for _, c := range n.Content {
			redactNode(c, t.Elem())
		}
	}
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// RedactDSN masks the password of a PostgreSQL URL (user:pass@ and
// ?password=) or keyword/value DSN (password=...).
func RedactDSN(dsn string) string {
	if dsn == "" {
		return ""
	}
	if !strings.Contains(dsn, "://") {
		return dsnPassword.ReplaceAllString(dsn, "${1}"+Redacted)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return Redacted + " (unparseable URL)"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), Redacted)
		}
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", Redacted)
		u.RawQuery = q.Encode()
	}
	return u.String()
}

var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
