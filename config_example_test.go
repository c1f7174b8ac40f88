package main

import (
	"reflect"
	"testing"
)

// mxid.toml.example lists every key with its default: loading it gives
// exactly the embedded default (empty lists written as [] count as unset).
func TestMxidTomlExampleIsTheDefault(t *testing.T) {
	got, err := loadConfig("mxid.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	g, w := reflect.ValueOf(&got).Elem(), reflect.ValueOf(&want).Elem()
	nilEmpty(g)
	nilEmpty(w)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mxid.toml.example differs from DefaultConfig:\n got  %+v\n want %+v", got, want)
	}
}

// nilEmpty sets every empty slice and map under v to nil.
func nilEmpty(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				nilEmpty(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 && v.CanSet() {
			v.Set(reflect.Zero(v.Type()))
		}
	}
}
