// Command cosig checks Quantus's witness cosignatures (C2SP tlog-cosignature) with
// implementations not written for Quantus: transparency-dev/formats' cosignature/v1 verifier
// reads the cosignatures Quantus's witness makes, filippo.io/torchwood's CosignatureSigner
// makes cosignatures Quantus's auditor must accept, over golang.org/x/mod/sumdb/note's
// signed-note parser.
//
//	cosig -verify -vkey VKEY -note FILE   prints "cosigned <name> <unix time>" for the valid
//	                                      cosignature by VKEY, exits non-zero if there is none
//	cosig -sign -name NAME -seed HEX -note FILE
//	                                      prints "vkey <vkey>" and the cosignature line
package main

import (
	"crypto/ed25519"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strings"

	"filippo.io/torchwood"
	tdnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cosig: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	verify := flag.Bool("verify", false, "verify a cosignature")
	sign := flag.Bool("sign", false, "cosign a checkpoint")
	vkey := flag.String("vkey", "", "the witness's verifier key")
	name := flag.String("name", "", "the witness's name (for -sign)")
	seed := flag.String("seed", "", "the witness's Ed25519 seed, hex (for -sign)")
	notePath := flag.String("note", "", "the checkpoint note")
	flag.Parse()
	text, err := os.ReadFile(*notePath)
	if err != nil {
		fail("%v", err)
	}
	switch {
	case *verify:
		cv, err := tdnote.NewVerifierForCosignatureV1(*vkey)
		if err != nil {
			fail("vkey: %v", err)
		}
		n, err := note.Open(text, note.VerifierList(cv))
		if err != nil {
			fail("note.Open: %v", err)
		}
		for _, sig := range n.Sigs {
			t, err := tdnote.CoSigV1Timestamp(sig)
			if err != nil {
				fail("timestamp: %v", err)
			}
			fmt.Printf("cosigned %s %d\n", sig.Name, t.Unix())
		}
	case *sign:
		raw, err := hex.DecodeString(*seed)
		if err != nil || len(raw) != ed25519.SeedSize {
			fail("-seed is not 32 bytes of hex")
		}
		signer, err := torchwood.NewCosignatureSigner(*name, ed25519.NewKeyFromSeed(raw))
		if err != nil {
			fail("%v", err)
		}
		body, _, found := strings.Cut(string(text), "\n\n")
		if !found {
			fail("the checkpoint is not a signed note")
		}
		signed, err := note.Sign(&note.Note{Text: body + "\n"}, signer)
		if err != nil {
			fail("note.Sign: %v", err)
		}
		_, sigs, _ := strings.Cut(string(signed), "\n\n")
		fmt.Printf("vkey %s\n%s", signer.Verifier().String(), sigs)
	default:
		fail("-verify or -sign")
	}
}
