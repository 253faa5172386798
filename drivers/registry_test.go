package drivers

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

type stubDriver struct {
	Base
	typ string
}

func stubFactory(typ string) Factory {
	return func(*DeviceConfig) (Driver, error) { return &stubDriver{typ: typ}, nil }
}

func TestRegistry(t *testing.T) {
	r := newRegistry()
	r.register("muxpi", stubFactory("muxpi"))
	r.register("fake_connector", stubFactory("fake_connector"), "fake", "fake2")
	r.register("broken", func(*DeviceConfig) (Driver, error) { return nil, errors.New("no control host") })

	if got, want := r.types(), []string{"broken", "fake_connector", "muxpi"}; !slices.Equal(got, want) {
		t.Errorf("types = %v, want %v", got, want)
	}
	for _, tc := range []struct {
		typ, want string
		ok        bool
	}{
		{"fake_connector", "fake_connector", true},
		{"fake", "fake_connector", true},
		{"fake2", "fake_connector", true},
		{"muxpi", "muxpi", true},
		{"Muxpi", "", false},
		{"", "", false},
	} {
		if got, ok := r.canonical(tc.typ); got != tc.want || ok != tc.ok {
			t.Errorf("canonical(%q) = %q, %v; want %q, %v", tc.typ, got, ok, tc.want, tc.ok)
		}
	}

	for _, tc := range []struct {
		typ, wantType, wantErr string
	}{
		{"fake", "fake_connector", ""},
		{"muxpi", "muxpi", ""},
		{"maas2", "", `device dev: unknown provision_type "maas2" (known: broken, fake_connector, muxpi)`},
		{"broken", "", "device dev: broken driver: no control host"},
	} {
		d, err := r.new(&DeviceConfig{Name: "dev", Type: tc.typ})
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("new(%q) = %v, %v; want error %q", tc.typ, d, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("new(%q): %v", tc.typ, err)
			continue
		}
		if s, ok := d.(*stubDriver); !ok || s.typ != tc.wantType {
			t.Errorf("new(%q) = %#v, want the %s driver", tc.typ, d, tc.wantType)
		}
	}
	if _, err := r.new(nil); err == nil {
		t.Error("new(nil) succeeded")
	}
	if got := newRegistry().known(); !strings.Contains(got, "none registered") {
		t.Errorf("known() of an empty registry = %q", got)
	}
}

func TestRegisterPanics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		typ     string
		f       Factory
		aliases []string
		want    string
	}{
		{"duplicate type", "muxpi", stubFactory("x"), nil, `"muxpi" is already registered (for "muxpi")`},
		{"type is another's alias", "fake", stubFactory("x"), nil, `"fake" is already registered (for "fake_connector")`},
		{"alias is another's type", "new", stubFactory("x"), []string{"muxpi"}, `"muxpi" is already registered (for "muxpi")`},
		{"alias is another's alias", "new", stubFactory("x"), []string{"fake"}, `"fake" is already registered (for "fake_connector")`},
		{"alias repeats the type", "new", stubFactory("x"), []string{"new"}, `"new" given twice`},
		{"empty type", "", stubFactory("x"), nil, "empty type"},
		{"empty alias", "new", stubFactory("x"), []string{""}, "empty alias"},
		{"nil factory", "new", nil, nil, "nil factory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistry()
			r.register("muxpi", stubFactory("muxpi"))
			r.register("fake_connector", stubFactory("fake_connector"), "fake")
			defer func() {
				p := recover()
				if p == nil || !strings.Contains(fmt.Sprint(p), tc.want) {
					t.Errorf("register panicked with %v, want a panic containing %q", p, tc.want)
				}
				// A failed registration leaves the registry as it was.
				if got := r.types(); !slices.Equal(got, []string{"fake_connector", "muxpi"}) {
					t.Errorf("types after a failed register = %v", got)
				}
				if _, ok := r.canonical("new"); ok {
					t.Error("a failed register left its type registered")
				}
			}()
			r.register(tc.typ, tc.f, tc.aliases...)
		})
	}
}

// TestRegistryConcurrent is meaningful under the race detector.
func TestRegistryConcurrent(t *testing.T) {
	r := newRegistry()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			typ := fmt.Sprintf("t%02d", i)
			r.register(typ, stubFactory(typ), "alias-"+typ)
			if _, err := r.new(&DeviceConfig{Type: "alias-" + typ}); err != nil {
				t.Error(err)
			}
			_ = r.types()
		})
	}
	wg.Wait()
	if n := len(r.types()); n != 20 {
		t.Errorf("%d types registered, want 20", n)
	}
}

func TestPackageRegistry(t *testing.T) {
	// The package-level functions use the default registry (which, in this
	// test binary, also holds the drivers the external tests import).
	if _, done := Canonical("pkgtest_connector"); !done { // -count=N runs this again
		Register("pkgtest_connector", stubFactory("pkgtest_connector"), "pkgtest")
	}
	if !slices.Contains(Types(), "pkgtest_connector") || slices.Contains(Types(), "pkgtest") {
		t.Errorf("Types() = %v, want pkgtest_connector and no alias", Types())
	}
	if c, ok := Canonical("pkgtest"); !ok || c != "pkgtest_connector" {
		t.Errorf("Canonical(pkgtest) = %q, %v", c, ok)
	}
	if d, err := New(&DeviceConfig{Name: "d", Type: "pkgtest"}); err != nil || d.(*stubDriver).typ != "pkgtest_connector" {
		t.Errorf("New(pkgtest) = %v, %v", d, err)
	}
	if _, err := New(&DeviceConfig{Name: "d", Type: "nope"}); err == nil || !strings.Contains(err.Error(), "pkgtest_connector") {
		t.Errorf("New(nope) = %v, want an error listing the known types", err)
	}
}
