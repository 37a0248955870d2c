package config

import (
	"fmt"
	"reflect"
)

// RestartChanges compares two configs of the same type (pointers) and
// returns the yaml paths of the fields tagged reload:"restart" whose
// values differ: the changes a reload cannot apply. A tagged struct,
// slice or pointer field is compared whole.
func RestartChanges(old, cur any) []string {
	var out []string
	restartDiff(reflect.ValueOf(old), reflect.ValueOf(cur), "", &out)
	return out
}

func restartDiff(a, b reflect.Value, path string, out *[]string) {
	for a.Kind() == reflect.Pointer {
		if a.IsNil() || b.IsNil() {
			return // a missing optional section is compared by its tagged parent
		}
		a, b = a.Elem(), b.Elem()
	}
	switch a.Kind() {
	case reflect.Struct:
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := yamlName(f)
			if name == "" {
				continue
			}
			p := Join(path, name)
			if f.Tag.Get("reload") == "restart" {
				if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
					*out = append(*out, p)
				}
				continue
			}
			restartDiff(a.Field(i), b.Field(i), p, out)
		}
	case reflect.Slice:
		n := min(a.Len(), b.Len())
		for i := 0; i < n; i++ {
			restartDiff(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", path, i), out)
		}
	}
}
