// The one script the verify page loads from the noble libraries (bundled by
// scripts/vendor-assets.sh with esbuild): exactly the primitives Quantus signatures need.
import { ml_dsa44, ml_dsa65, ml_dsa87 } from "@noble/post-quantum/ml-dsa.js";
import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256, sha512 } from "@noble/hashes/sha2.js";

globalThis.QuantusNoble = Object.freeze({ ml_dsa44, ml_dsa65, ml_dsa87, ed25519, sha256, sha512 });
