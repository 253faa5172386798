package drivers

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Factory builds the driver of one device from its configuration.
type Factory func(cfg *DeviceConfig) (Driver, error)

// registry maps connector types (and their aliases) to factories.
type registry struct {
	mu        sync.RWMutex
	factories map[string]Factory // by canonical name
	names     map[string]string  // canonical name or alias -> canonical name
}

func newRegistry() *registry {
	return &registry{factories: map[string]Factory{}, names: map[string]string{}}
}

// defaultRegistry is the registry the package-level functions use.
var defaultRegistry = newRegistry()

func (r *registry) register(typ string, f Factory, aliases ...string) {
	if typ == "" {
		panic("drivers: Register with an empty type")
	}
	if f == nil {
		panic(fmt.Sprintf("drivers: Register %q with a nil factory", typ))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	names := append([]string{typ}, aliases...)
	for i, n := range names {
		if n == "" {
			panic(fmt.Sprintf("drivers: Register %q with an empty alias", typ))
		}
		if c, dup := r.names[n]; dup {
			panic(fmt.Sprintf("drivers: Register %q: %q is already registered (for %q)", typ, n, c))
		}
		for _, prev := range names[:i] {
			if prev == n {
				panic(fmt.Sprintf("drivers: Register %q: %q given twice", typ, n))
			}
		}
	}
	r.factories[typ] = f
	for _, n := range names {
		r.names[n] = typ
	}
}

func (r *registry) canonical(typ string) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.names[typ]
	return c, ok
}

func (r *registry) types() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.factories))
	for t := range r.factories {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

func (r *registry) known() string {
	t := r.types()
	if len(t) == 0 {
		return "none registered; import github.com/flingerlab/flinger/drivers/all"
	}
	return strings.Join(t, ", ")
}

func (r *registry) new(cfg *DeviceConfig) (Driver, error) {
	if cfg == nil {
		return nil, fmt.Errorf("new driver: no device configuration")
	}
	c, ok := r.canonical(cfg.Type)
	if !ok {
		return nil, fmt.Errorf("device %s: unknown provision_type %q (known: %s)", cfg.Name, cfg.Type, r.known())
	}
	r.mu.RLock()
	f := r.factories[c]
	r.mu.RUnlock()
	d, err := f(cfg)
	if err != nil {
		return nil, fmt.Errorf("device %s: %s driver: %w", cfg.Name, c, err)
	}
	return d, nil
}

// Register makes the driver of connector type typ (a canonical name such
// as fake_connector) and its aliases available to New and to the checks of
// ParseHost. Driver packages call it from init. It panics if typ or an
// alias is empty or already registered, or if f is nil.
func Register(typ string, f Factory, aliases ...string) {
	defaultRegistry.register(typ, f, aliases...)
}

// New builds the driver for cfg.Type (a canonical name or an alias). An
// unknown type is an error naming it and listing the known types.
func New(cfg *DeviceConfig) (Driver, error) { return defaultRegistry.new(cfg) }

// Types returns the canonical names of the registered connector types, sorted.
func Types() []string { return defaultRegistry.types() }

// Canonical returns the canonical name of typ, which may be an alias, and
// whether it is registered.
func Canonical(typ string) (string, bool) { return defaultRegistry.canonical(typ) }

// knownTypes lists the registered types for error messages.
func knownTypes() string { return defaultRegistry.known() }
