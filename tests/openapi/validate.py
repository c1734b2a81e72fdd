"""Validates an OpenAPI document with openapi-spec-validator; prints every error, exits 1 on any.

    python3 tests/openapi/validate.py openapi.json
"""

import json
import sys

from openapi_spec_validator import OpenAPIV31SpecValidator


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    errors = list(OpenAPIV31SpecValidator(spec).iter_errors())
    for e in errors:
        print(f"- {e.message} (at {'/'.join(str(p) for p in e.absolute_path)})")
    print(f"{len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
