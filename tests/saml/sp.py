#!/usr/bin/env python3
"""An independent SAML 2.0 service provider (pysaml2, signatures checked by xmlsec1) used by
tests/it/saml.rs against QSA's identity provider.

    sp.py authn --metadata URL --sp ENTITY --acs URL [--key PEM --cert PEM] [--binding redirect|post]
        -> {"request_id", "url" (redirect binding) | "saml_request" (post binding)}
    sp.py acs --metadata URL --sp ENTITY --acs URL --response B64 --state FILE
              [--request-id ID] [--offset SECONDS]
        -> {"ok": true, "name_id", "name_id_format", "attributes", "audience", ...}
           or {"ok": false, "error"} (exit status 3)
    sp.py logout --metadata URL --sp ENTITY --acs URL --slo URL --name-id X --session-index S
              [--key PEM --cert PEM]
        -> {"request_id", "url"}
    sp.py logout-response --metadata URL --sp ENTITY --acs URL --slo URL
              (--response B64 | --redirect-url URL)
        -> {"ok": true, "status", "in_response_to", "signed", "binding"}
           (--redirect-url: the HTTP-Redirect binding, its query signature verified with the
           IdP's certificate from the metadata)
    sp.py sp-metadata --metadata URL --sp ENTITY --acs URL --slo URL [--cert PEM]
              [--slo-binding redirect|post]
        -> {"xml"}: this SP's own metadata, as pysaml2 writes it

The SP keeps its own replay cache in --state: an assertion or response ID it has accepted once,
or an InResponseTo it has already consumed, is refused the second time (pysaml2 leaves replay
detection to its caller). --offset checks "as if" that many seconds later.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS
from saml2.xmldsig import SIG_RSA_SHA256, DIGEST_SHA256


def shift_clock(offset):
    if not offset:
        return
    real_time, real_gmtime = time.time, time.gmtime
    time.time = lambda: real_time() + offset
    time.gmtime = lambda secs=None: real_gmtime(real_time() + offset if secs is None else secs)


def client(args, metadata_xml):
    sp = {
        "endpoints": {
            "assertion_consumer_service": [(args.acs, BINDING_HTTP_POST)],
            "single_logout_service": [(getattr(args, "slo", None) or args.acs + "/slo",
                                       BINDING_HTTP_REDIRECT if getattr(args, "slo_binding", "post") == "redirect"
                                       else BINDING_HTTP_POST)],
        },
        "want_response_signed": True,
        "want_assertions_signed": True,
        "allow_unsolicited": bool(getattr(args, "unsolicited", False)),
        "authn_requests_signed": bool(getattr(args, "key", None)),
        "logout_requests_signed": bool(getattr(args, "key", None)),
        "signing_algorithm": SIG_RSA_SHA256,
        "digest_algorithm": DIGEST_SHA256,
        "allow_unknown_attributes": True,
    }
    conf = {
        "entityid": args.sp,
        "metadata": {"inline": [metadata_xml]},
        "service": {"sp": sp},
        "xmlsec_binary": os.environ.get("XMLSEC1", "/usr/bin/xmlsec1"),
        "allow_unknown_attributes": True,
        "accepted_time_diff": 0,
    }
    if getattr(args, "key", None):
        conf["key_file"] = args.key
        conf["cert_file"] = args.cert
    cfg = SPConfig()
    cfg.load(conf)
    return Saml2Client(config=cfg)


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def idp_entity(metadata_xml):
    start = metadata_xml.index('entityID="') + len('entityID="')
    return metadata_xml[start:metadata_xml.index('"', start)]


def authn(args):
    md = fetch(args.metadata)
    c = client(args, md)
    binding = BINDING_HTTP_POST if args.binding == "post" else BINDING_HTTP_REDIRECT
    kwargs = {}
    if args.key:
        kwargs["sign"] = True
        kwargs["sigalg"] = SIG_RSA_SHA256
        kwargs["digest_alg"] = DIGEST_SHA256
    if args.force_authn:
        kwargs["force_authn"] = "true"
    if args.is_passive:
        kwargs["is_passive"] = "true"
    req_id, info = c.prepare_for_authenticate(
        entityid=idp_entity(md), relay_state=args.relay_state, binding=binding,
        nameid_format=args.name_id_format, **kwargs)
    out = {"request_id": req_id}
    if binding == BINDING_HTTP_REDIRECT:
        out["url"] = dict(info["headers"])["Location"]
    else:
        out["form"] = info["data"]
    print(json.dumps(out))


def load_state(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"seen_ids": [], "consumed_requests": []}


def acs(args):
    md = fetch(args.metadata)
    shift_clock(args.offset)
    c = client(args, md)
    state = load_state(args.state)
    outstanding = {}
    if args.request_id:
        outstanding[args.request_id] = "/"
    try:
        resp = c.parse_authn_request_response(args.response, BINDING_HTTP_POST, outstanding=outstanding)
        if resp is None or resp.response is None or resp.assertion is None:
            # pysaml2 drops a Response whose Destination/Recipient is not this SP's ACS URL.
            raise Exception("the Response is not for this SP's ACS URL (destination/recipient)")
        assertion = resp.assertion
        ids = [resp.response.id, assertion.id]
        if any(i in state["seen_ids"] for i in ids):
            raise Exception("replayed response: its ID was already accepted")
        irt = resp.response.in_response_to
        if irt and irt in state["consumed_requests"]:
            raise Exception("replayed response: InResponseTo was already consumed")
        state["seen_ids"].extend(ids)
        if irt:
            state["consumed_requests"].append(irt)
        with open(args.state, "w") as f:
            json.dump(state, f)
        name_id = resp.name_id
        conf = assertion.subject.subject_confirmation[0].subject_confirmation_data
        out = {
            "ok": True,
            "issuer": resp.response.issuer.text,
            "name_id": name_id.text,
            "name_id_format": name_id.format,
            "attributes": resp.get_identity(),
            "audience": [a.text for r in assertion.conditions.audience_restriction for a in r.audience],
            "recipient": conf.recipient,
            "in_response_to": irt,
            "not_on_or_after": conf.not_on_or_after,
            "authn_context": resp.authn_info()[0][0] if resp.authn_info() else None,
            "session_index": assertion.authn_statement[0].session_index,
            "assertion_signed": bool(assertion.signature),
            "response_signed": bool(resp.response.signature),
        }
        print(json.dumps(out))
    except Exception as e:  # noqa: BLE001 - every refusal is reported, with its reason
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(3)


def logout(args):
    md = fetch(args.metadata)
    c = client(args, md)
    from saml2.saml import NameID
    name_id = NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=args.name_id)
    dest = c.metadata.single_logout_service(idp_entity(md), BINDING_HTTP_REDIRECT, "idpsso")[0]["location"]
    req_id, req = c.create_logout_request(dest, idp_entity(md), name_id=name_id,
                                          session_indexes=[args.session_index], sign=False)
    info = c.apply_binding(BINDING_HTTP_REDIRECT, str(req), dest, relay_state="bye",
                           sigalg=SIG_RSA_SHA256 if args.key else None, sign=bool(args.key))
    print(json.dumps({"request_id": req_id, "url": dict(info["headers"])["Location"]}))


def logout_response(args):
    md = fetch(args.metadata)
    c = client(args, md)
    try:
        if args.redirect_url:
            from urllib.parse import parse_qs, urlsplit
            from saml2.sigver import RSACrypto, verify_redirect_signature
            query = {k: v[0] for k, v in parse_qs(urlsplit(args.redirect_url).query).items()}
            certs = c.metadata.certs(idp_entity(md), "idpsso", "signing")
            if not certs or "Signature" not in query:
                raise Exception("the redirect carries no signature")
            if not any(verify_redirect_signature(query, RSACrypto(None), cert=cert[1]) for cert in certs):
                raise Exception("the redirect's Signature does not verify")
            resp = c.parse_logout_request_response(query["SAMLResponse"], BINDING_HTTP_REDIRECT)
            signed, binding = True, "redirect"
        else:
            resp = c.parse_logout_request_response(args.response, BINDING_HTTP_POST)
            signed, binding = None, "post"
        if resp is None:
            raise Exception("no response")
        print(json.dumps({
            "ok": True,
            "status": resp.response.status.status_code.value,
            "in_response_to": resp.response.in_response_to,
            "signed": signed if signed is not None else bool(resp.response.signature),
            "binding": binding,
        }))
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(3)


def sp_metadata(args):
    from saml2.metadata import create_metadata_string
    md = fetch(args.metadata)
    c = client(args, md)
    xml = create_metadata_string(None, c.config, 4, None, None, None, None, None)
    print(json.dumps({"xml": xml.decode() if isinstance(xml, bytes) else xml}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("authn", "acs", "logout", "logout-response", "sp-metadata"):
        s = sub.add_parser(name)
        s.add_argument("--metadata", required=True)
        s.add_argument("--sp", required=True)
        s.add_argument("--acs", required=True)
        s.add_argument("--slo")
        s.add_argument("--key")
        s.add_argument("--cert")
    a = sub.choices["authn"]
    a.add_argument("--binding", default="redirect")
    a.add_argument("--relay-state", default="rs-1")
    a.add_argument("--name-id-format", default=NAMEID_FORMAT_EMAILADDRESS)
    a.add_argument("--force-authn", action="store_true")
    a.add_argument("--is-passive", action="store_true")
    a = sub.choices["acs"]
    a.add_argument("--response", required=True)
    a.add_argument("--state", required=True)
    a.add_argument("--request-id")
    a.add_argument("--offset", type=int, default=0)
    a.add_argument("--unsolicited", action="store_true")
    a = sub.choices["logout"]
    a.add_argument("--name-id", required=True)
    a.add_argument("--session-index", required=True)
    a = sub.choices["logout-response"]
    a.add_argument("--response")
    a.add_argument("--redirect-url")
    sub.choices["sp-metadata"].add_argument("--slo-binding", default="post")
    args = p.parse_args()
    {"authn": authn, "acs": acs, "logout": logout, "logout-response": logout_response,
     "sp-metadata": sp_metadata}[args.cmd](args)


if __name__ == "__main__":
    main()
