package store

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/podapi"
)

// LoadAll reads every group as one consistent snapshot (a single range
// read over the prefix), for metrics. Keys that are not a group's state or
// member record are skipped.
func (s *Store) LoadAll(ctx context.Context) ([]*rendezvous.View, error) {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read all groups under %s: %w", s.prefix, err)
	}
	views := map[podapi.Key]*rendezvous.View{}
	var out []*rendezvous.View
	for _, kv := range resp.Kvs {
		parts := strings.SplitN(strings.TrimPrefix(string(kv.Key), s.prefix), "/", 3)
		if len(parts) != 3 {
			continue
		}
		k := podapi.Key{Namespace: parts[0], Name: parts[1]}
		v := views[k]
		if v == nil {
			v = &rendezvous.View{Key: k, Members: map[string]rendezvous.Member{}, Rev: resp.Header.Revision}
			views[k] = v
			out = append(out, v)
		}
		if err := s.Apply(v, string(kv.Key), kv.Value, kv.CreateRevision, kv.ModRevision, kv.Lease, false); err != nil {
			return nil, err
		}
	}
	return out, nil
}
