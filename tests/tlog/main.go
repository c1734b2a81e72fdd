// Command tlog checks Quantus's log through its C2SP tlog-tiles API with implementations not
// written for Quantus: filippo.io/torchwood (tile fetching, paths, entry bundles) and
// golang.org/x/mod/sumdb/tlog (tree hashes and proofs). It reads the latest checkpoint,
// recomputes the tree head from the tiles, proves and checks every -every'th entry and the
// last one, and proves the tree consistent with an older one. It prints one line per entry
// checked ("entry <index> <hex> <base64 proof hashes, comma-separated>") and "OK" at the end;
// any failure exits non-zero.
package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/tlog"
)

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tlog: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	base := flag.String("prefix", "", "the log's tiles prefix URL, e.g. http://host/v1/audit/log")
	token := flag.String("token", "", "bearer token with events:read")
	every := flag.Int64("every", 1, "check every n-th entry")
	oldSize := flag.Int64("old-size", 0, "an older tree size to prove consistency with")
	oldRoot := flag.String("old-root", "", "that tree's root, base64")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	hc := &http.Client{Transport: bearer{*token}, Timeout: 10 * time.Second}
	fetcher, err := torchwood.NewTileFetcher(*base, torchwood.WithHTTPClient(hc))
	if err != nil {
		fail("%v", err)
	}
	note, err := fetcher.ReadEndpoint(ctx, "checkpoint")
	if err != nil {
		fail("checkpoint: %v", err)
	}
	body, _, found := strings.Cut(string(note), "\n\n")
	if !found {
		fail("the checkpoint is not a signed note")
	}
	checkpoint, err := torchwood.ParseCheckpoint(body + "\n")
	if err != nil {
		fail("checkpoint: %v", err)
	}
	tree := checkpoint.Tree
	hashes := torchwood.TileHashReaderWithContext(ctx, tree, fetcher)
	// TreeHash reads the tiles the head needs, and the reader checks them against the head.
	head, err := tlog.TreeHash(tree.N, hashes)
	if err != nil {
		fail("tree hash from tiles: %v", err)
	}
	if head != tree.Hash {
		fail("the tiles hash to %v, the checkpoint says %v", head, tree.Hash)
	}
	client, err := torchwood.NewClient(fetcher)
	if err != nil {
		fail("%v", err)
	}
	for i := int64(0); i < tree.N; i++ {
		if i%*every != 0 && i != tree.N-1 {
			continue
		}
		entry, proof, err := client.Entry(ctx, tree, i)
		if err != nil {
			fail("entry %d: %v", i, err)
		}
		parts := make([]string, len(proof))
		for j, h := range proof {
			parts[j] = base64.StdEncoding.EncodeToString(h[:])
		}
		fmt.Printf("entry %d %s %s\n", i, hex.EncodeToString(entry), strings.Join(parts, ","))
	}
	if *oldSize > 0 {
		raw, err := base64.StdEncoding.DecodeString(*oldRoot)
		if err != nil || len(raw) != tlog.HashSize {
			fail("-old-root is not a base64 hash")
		}
		var old tlog.Hash
		copy(old[:], raw)
		proof, err := tlog.ProveTree(tree.N, *oldSize, hashes)
		if err != nil {
			fail("consistency proof: %v", err)
		}
		if err := tlog.CheckTree(proof, tree.N, tree.Hash, *oldSize, old); err != nil {
			fail("the tree of %d is not an extension of the tree of %d: %v", tree.N, *oldSize, err)
		}
		fmt.Printf("consistent %d %d\n", *oldSize, tree.N)
	}
	fmt.Printf("OK %d\n", tree.N)
}
