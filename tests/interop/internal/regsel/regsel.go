// Package regsel picks the registry of an interop peer (node, reference gate) from its etc.toml,
// as a due program picks one in code: [registry.etcd] present → the etcd stand-in
// (internal/etcdreg), otherwise the Consul stand-in (internal/consulreg). Both stand in for due
// modules the reachable Go module proxy refuses; see their package comments.
package regsel

import (
	"github.com/dobyte/due/v2/etc"
	"github.com/dobyte/due/v2/log"
	"github.com/dobyte/due/v2/registry"

	"gatehouse/interop/internal/consulreg"
	"gatehouse/interop/internal/etcdreg"
)

// New returns the registry and the function that closes it.
func New() (registry.Registry, func()) {
	if etc.Has("etc.registry.etcd") {
		r := etcdreg.New(etcdreg.OptionsFromEtc())
		return r, r.Close
	}
	r, err := consulreg.New(consulreg.OptionsFromEtc())
	if err != nil {
		log.Fatalf("consul registry: %v", err)
	}
	return r, r.Close
}
