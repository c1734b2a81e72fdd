//! SAML messages as XML: what QSA writes (metadata, Response with its Assertion,
//! LogoutResponse), signed with XML Signature, and what it reads (AuthnRequest, LogoutRequest).
//!
//! Signed elements are *written directly in their exclusive-canonical form*
//! (http://www.w3.org/2001/10/xml-exc-c14n#): no XML declaration inside, no whitespace between
//! elements, empty elements as start/end pairs, attributes in canonical order (namespace
//! declarations first, then unqualified attributes by name), each namespace declared exactly on
//! the outermost element that uses its prefix, and text/attribute escaping as the canonical form
//! has it. The digest of an element is then simply SHA-256 of the bytes written (minus the
//! enveloped signature), and `SignedInfo` is signed in the form a verifier's canonicalizer
//! produces (with `xmlns:ds` on it, as exclusive c14n renders it when it is the apex). An
//! independent verifier (xmlsec through pysaml2, tests/saml) checks both.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use quick_xml::events::Event;
use sha2::{Digest, Sha256};

pub const NS_SAMLP: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub const NS_SAML: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const NS_DS: &str = "http://www.w3.org/2000/09/xmldsig#";
pub const NS_MD: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
pub const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
pub const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
pub const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
pub const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
pub const BINDING_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
pub const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
pub const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
/// Top-level status: the request could not be performed due to an error on the SP's part.
pub const STATUS_REQUESTER: &str = "urn:oasis:names:tc:SAML:2.0:status:Requester";
/// Top-level status: an error on the IdP's part (or its decision about the person).
pub const STATUS_RESPONDER: &str = "urn:oasis:names:tc:SAML:2.0:status:Responder";
pub const STATUS_NO_PASSIVE: &str = "urn:oasis:names:tc:SAML:2.0:status:NoPassive";
pub const STATUS_AUTHN_FAILED: &str = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed";
pub const STATUS_REQUEST_DENIED: &str = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied";
pub const STATUS_UNSUPPORTED_BINDING: &str =
    "urn:oasis:names:tc:SAML:2.0:status:UnsupportedBinding";
pub const STATUS_INVALID_NAMEID_POLICY: &str =
    "urn:oasis:names:tc:SAML:2.0:status:InvalidNameIDPolicy";
pub const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
pub const ATTRNAME_BASIC: &str = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic";
pub const AC_PASSWORD_PROTECTED: &str =
    "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport";
/// REFEDS MFA profile: the de facto class for "more than one factor".
pub const AC_MFA: &str = "https://refeds.org/profile/mfa";

/// Text content as exclusive c14n writes it.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

/// An attribute value as exclusive c14n writes it.
pub fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

/// xs:dateTime in UTC, whole seconds.
pub fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A fresh message id: 128 random bits (SAML Core §1.3.4), as an NCName (`_` first).
pub fn new_id() -> String {
    format!("_{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// The canonical `SignedInfo` for an enveloped, exclusive-c14n, RSA-SHA256 signature over the
/// element with `id` whose canonical form (without the signature) has `digest` (base64).
pub fn signed_info(id: &str, digest: &str) -> String {
    format!(
        "<ds:SignedInfo xmlns:ds=\"{NS_DS}\"><ds:CanonicalizationMethod Algorithm=\"{EXC_C14N}\"></ds:CanonicalizationMethod>\
<ds:SignatureMethod Algorithm=\"{RSA_SHA256}\"></ds:SignatureMethod><ds:Reference URI=\"#{id}\"><ds:Transforms>\
<ds:Transform Algorithm=\"{ENVELOPED}\"></ds:Transform><ds:Transform Algorithm=\"{EXC_C14N}\"></ds:Transform></ds:Transforms>\
<ds:DigestMethod Algorithm=\"{SHA256}\"></ds:DigestMethod><ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>",
        id = attr(id)
    )
}

/// An element prepared for an enveloped signature: its canonical bytes with the signature's
/// place marked (right after its `Issuer`, as SAML's schema orders it).
pub struct Unsigned {
    pub id: String,
    /// Up to and including `</saml:Issuer>`.
    pub head: String,
    pub tail: String,
}

impl Unsigned {
    /// SHA-256 (base64) of the canonical element without signature.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.head.as_bytes());
        h.update(self.tail.as_bytes());
        STANDARD.encode(h.finalize())
    }

    /// The bytes to sign: the canonical `SignedInfo`.
    pub fn to_sign(&self) -> String {
        signed_info(&self.id, &self.digest())
    }

    /// The element with its signature (`signature` over [`to_sign`](Self::to_sign)) and the
    /// certificate (DER, base64) in `KeyInfo`.
    pub fn with_signature(&self, signature: &[u8], certificate_b64: &str) -> String {
        // In the document, SignedInfo inherits xmlns:ds from Signature (so the outer element's
        // canonical form, which contains this signature, is exactly these bytes).
        let si = self
            .to_sign()
            .replacen(&format!(" xmlns:ds=\"{NS_DS}\""), "", 1);
        format!(
            "{head}<ds:Signature xmlns:ds=\"{NS_DS}\">{si}<ds:SignatureValue>{sig}</ds:SignatureValue>\
<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>{tail}",
            head = self.head,
            tail = self.tail,
            sig = STANDARD.encode(signature),
            cert = certificate_b64,
        )
    }
}

fn issuer(idp_entity_id: &str) -> String {
    format!(
        "<saml:Issuer xmlns:saml=\"{NS_SAML}\">{}</saml:Issuer>",
        text(idp_entity_id)
    )
}

/// What goes into an assertion.
#[derive(Debug, Clone)]
pub struct AssertionParts<'a> {
    pub id: &'a str,
    pub idp_entity_id: &'a str,
    pub sp_entity_id: &'a str,
    pub acs_url: &'a str,
    pub in_response_to: Option<&'a str>,
    pub name_id: &'a str,
    pub name_id_format: &'a str,
    pub now: DateTime<Utc>,
    pub not_on_or_after: DateTime<Utc>,
    pub auth_instant: DateTime<Utc>,
    pub session_index: &'a str,
    pub authn_context: &'a str,
    /// (name, values)
    pub attributes: &'a [(String, Vec<String>)],
}

/// The unsigned canonical Assertion.
pub fn assertion(p: &AssertionParts<'_>) -> Unsigned {
    let irt = p
        .in_response_to
        .map(|i| format!(" InResponseTo=\"{}\"", attr(i)))
        .unwrap_or_default();
    let head = format!(
        "<saml:Assertion xmlns:saml=\"{NS_SAML}\" ID=\"{id}\" IssueInstant=\"{now}\" Version=\"2.0\">\
<saml:Issuer>{iss}</saml:Issuer>",
        id = attr(p.id),
        now = instant(p.now),
        iss = text(p.idp_entity_id)
    );
    let attributes = if p.attributes.is_empty() {
        String::new()
    } else {
        let mut s = String::from("<saml:AttributeStatement>");
        for (name, values) in p.attributes {
            s.push_str(&format!(
                "<saml:Attribute Name=\"{}\" NameFormat=\"{ATTRNAME_BASIC}\">",
                attr(name)
            ));
            for v in values {
                s.push_str(&format!(
                    "<saml:AttributeValue>{}</saml:AttributeValue>",
                    text(v)
                ));
            }
            s.push_str("</saml:Attribute>");
        }
        s.push_str("</saml:AttributeStatement>");
        s
    };
    let tail = format!(
        "<saml:Subject><saml:NameID Format=\"{fmt}\">{name_id}</saml:NameID>\
<saml:SubjectConfirmation Method=\"{BEARER}\"><saml:SubjectConfirmationData{irt} NotOnOrAfter=\"{noa}\" Recipient=\"{acs}\">\
</saml:SubjectConfirmationData></saml:SubjectConfirmation></saml:Subject>\
<saml:Conditions NotBefore=\"{nb}\" NotOnOrAfter=\"{noa}\"><saml:AudienceRestriction><saml:Audience>{aud}</saml:Audience>\
</saml:AudienceRestriction></saml:Conditions>\
<saml:AuthnStatement AuthnInstant=\"{ai}\" SessionIndex=\"{si}\"><saml:AuthnContext><saml:AuthnContextClassRef>{ac}</saml:AuthnContextClassRef>\
</saml:AuthnContext></saml:AuthnStatement>{attributes}</saml:Assertion>",
        fmt = attr(p.name_id_format),
        name_id = text(p.name_id),
        noa = instant(p.not_on_or_after),
        acs = attr(p.acs_url),
        // A little slack for clocks that run behind.
        nb = instant(p.now - chrono::Duration::seconds(60)),
        aud = text(p.sp_entity_id),
        ai = instant(p.auth_instant),
        si = attr(p.session_index),
        ac = text(p.authn_context),
    );
    Unsigned {
        id: p.id.to_owned(),
        head,
        tail,
    }
}

/// The unsigned canonical Response around a signed assertion.
pub fn response(
    id: &str,
    idp_entity_id: &str,
    destination: &str,
    in_response_to: Option<&str>,
    now: DateTime<Utc>,
    signed_assertion: &str,
) -> Unsigned {
    let irt = in_response_to
        .map(|i| format!(" InResponseTo=\"{}\"", attr(i)))
        .unwrap_or_default();
    Unsigned {
        id: id.to_owned(),
        head: format!(
            "<samlp:Response xmlns:samlp=\"{NS_SAMLP}\" Destination=\"{dest}\" ID=\"{id}\"{irt} IssueInstant=\"{now}\" Version=\"2.0\">{iss}",
            dest = attr(destination),
            id = attr(id),
            now = instant(now),
            iss = issuer(idp_entity_id),
        ),
        tail: format!(
            "<samlp:Status><samlp:StatusCode Value=\"{STATUS_SUCCESS}\"></samlp:StatusCode></samlp:Status>{signed_assertion}</samlp:Response>"
        ),
    }
}

/// The unsigned canonical Response that carries only a status (no assertion): what the IdP
/// answers when it cannot or will not sign the person in (SAML Core §3.2.2.2).
#[allow(clippy::too_many_arguments)]
pub fn status_response(
    id: &str,
    idp_entity_id: &str,
    destination: &str,
    in_response_to: Option<&str>,
    now: DateTime<Utc>,
    top: &str,
    sub: Option<&str>,
    message: &str,
) -> Unsigned {
    let irt = in_response_to
        .map(|i| format!(" InResponseTo=\"{}\"", attr(i)))
        .unwrap_or_default();
    let code = match sub {
        Some(sub) => format!(
            "<samlp:StatusCode Value=\"{}\"><samlp:StatusCode Value=\"{}\"></samlp:StatusCode></samlp:StatusCode>",
            attr(top),
            attr(sub)
        ),
        None => format!(
            "<samlp:StatusCode Value=\"{}\"></samlp:StatusCode>",
            attr(top)
        ),
    };
    Unsigned {
        id: id.to_owned(),
        head: format!(
            "<samlp:Response xmlns:samlp=\"{NS_SAMLP}\" Destination=\"{dest}\" ID=\"{id}\"{irt} IssueInstant=\"{now}\" Version=\"2.0\">{iss}",
            dest = attr(destination),
            id = attr(id),
            now = instant(now),
            iss = issuer(idp_entity_id),
        ),
        tail: format!(
            "<samlp:Status>{code}<samlp:StatusMessage>{msg}</samlp:StatusMessage></samlp:Status></samlp:Response>",
            msg = text(message)
        ),
    }
}

impl Unsigned {
    /// The element without a signature (for the HTTP-Redirect binding, whose signature is
    /// over the query string).
    pub fn unsigned(&self) -> String {
        format!("{}{}", self.head, self.tail)
    }
}

/// HTTP-Redirect binding: raw DEFLATE, then base64 (SAML Bindings §3.4.4.1).
pub fn deflate_redirect(xml: &str) -> String {
    use std::io::Write as _;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = z.write_all(xml.as_bytes());
    STANDARD.encode(z.finish().unwrap_or_default())
}

/// The query an HTTP-Redirect message is signed over: `<param>=…[&RelayState=…]&SigAlg=…`,
/// each value URL-encoded (SAML Bindings §3.4.4.1).
pub fn redirect_query(param: &str, message_b64: &str, relay_state: Option<&str>) -> String {
    let enc = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let mut q = format!("{param}={}", enc(message_b64));
    if let Some(rs) = relay_state {
        q.push_str(&format!("&RelayState={}", enc(rs)));
    }
    q.push_str(&format!("&SigAlg={}", enc(RSA_SHA256)));
    q
}

/// The unsigned canonical LogoutResponse.
pub fn logout_response(
    id: &str,
    idp_entity_id: &str,
    destination: &str,
    in_response_to: &str,
    now: DateTime<Utc>,
) -> Unsigned {
    Unsigned {
        id: id.to_owned(),
        head: format!(
            "<samlp:LogoutResponse xmlns:samlp=\"{NS_SAMLP}\" Destination=\"{dest}\" ID=\"{id}\" InResponseTo=\"{irt}\" IssueInstant=\"{now}\" Version=\"2.0\">{iss}",
            dest = attr(destination),
            id = attr(id),
            irt = attr(in_response_to),
            now = instant(now),
            iss = issuer(idp_entity_id),
        ),
        tail: format!(
            "<samlp:Status><samlp:StatusCode Value=\"{STATUS_SUCCESS}\"></samlp:StatusCode></samlp:Status></samlp:LogoutResponse>"
        ),
    }
}

/// The IdP's metadata (not signed: it is fetched over TLS from the issuer).
pub fn metadata(entity_id: &str, sso: &str, slo: &str, certificates_b64: &[String]) -> String {
    let keys: String = certificates_b64
        .iter()
        .map(|c| {
            format!(
                "<md:KeyDescriptor use=\"signing\"><ds:KeyInfo xmlns:ds=\"{NS_DS}\"><ds:X509Data><ds:X509Certificate>{c}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
            )
        })
        .collect();
    let formats: String = quantus_domain::identity::saml::NameIdFormat::ALL
        .iter()
        .map(|f| format!("<md:NameIDFormat>{}</md:NameIDFormat>", f.urn()))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<md:EntityDescriptor xmlns:md=\"{NS_MD}\" entityID=\"{eid}\">\
<md:IDPSSODescriptor WantAuthnRequestsSigned=\"false\" protocolSupportEnumeration=\"{NS_SAMLP}\">{keys}\
<md:SingleLogoutService Binding=\"{BINDING_REDIRECT}\" Location=\"{slo}\"/>\
<md:SingleLogoutService Binding=\"{BINDING_POST}\" Location=\"{slo}\"/>{formats}\
<md:SingleSignOnService Binding=\"{BINDING_REDIRECT}\" Location=\"{sso}\"/>\
<md:SingleSignOnService Binding=\"{BINDING_POST}\" Location=\"{sso}\"/>\
</md:IDPSSODescriptor></md:EntityDescriptor>\n",
        eid = attr(entity_id),
        slo = attr(slo),
        sso = attr(sso),
    )
}

// ---- reading requests ----

/// An SP's AuthnRequest or LogoutRequest, as far as QSA uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `AuthnRequest` or `LogoutRequest`.
    pub kind: String,
    pub id: String,
    pub issuer: Option<String>,
    pub destination: Option<String>,
    pub acs_url: Option<String>,
    pub protocol_binding: Option<String>,
    pub force_authn: bool,
    pub is_passive: bool,
    pub name_id_format: Option<String>,
    pub name_id: Option<String>,
    pub session_index: Option<String>,
    /// The request's `IssueInstant`, as written.
    pub issue_instant: Option<String>,
    /// Whether the XML carries an enveloped `ds:Signature`.
    pub has_xml_signature: bool,
}

/// Largest request QSA reads (inflated).
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Deepest element nesting QSA reads: real requests nest four or five levels.
pub const MAX_REQUEST_DEPTH: usize = 32;

/// HTTP-Redirect binding: base64, then raw DEFLATE (SAML Bindings §3.4.4.1).
pub fn inflate_redirect(b64: &str) -> Result<String, String> {
    use std::io::Read as _;
    let raw = STANDARD
        .decode(b64.trim())
        .map_err(|_| "SAMLRequest is not base64".to_owned())?;
    let mut out = String::new();
    flate2::read::DeflateDecoder::new(raw.as_slice())
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_string(&mut out)
        .map_err(|_| "SAMLRequest is not DEFLATE-compressed UTF-8".to_owned())?;
    if out.len() as u64 > MAX_REQUEST_BYTES {
        return Err("SAMLRequest is too large".into());
    }
    Ok(out)
}

/// HTTP-POST binding: plain base64.
pub fn decode_post(b64: &str) -> Result<String, String> {
    let raw: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = STANDARD
        .decode(raw)
        .map_err(|_| "SAMLRequest is not base64".to_owned())?;
    if bytes.len() as u64 > MAX_REQUEST_BYTES {
        return Err("SAMLRequest is too large".into());
    }
    String::from_utf8(bytes).map_err(|_| "SAMLRequest is not UTF-8".to_owned())
}

/// Reads an AuthnRequest or LogoutRequest. Refuses DTDs (no entity tricks), a root element
/// outside the protocol namespace, and missing IDs.
pub fn parse_request(xml: &str) -> Result<Request, String> {
    use quick_xml::name::ResolveResult;
    if xml.len() as u64 > MAX_REQUEST_BYTES {
        return Err("SAMLRequest is too large".into());
    }
    let mut reader = quick_xml::NsReader::from_str(xml);
    let mut req = Request::default();
    let mut path: Vec<String> = Vec::new();
    // Text of the current element (quick-xml hands entity references separately).
    let mut buf = String::new();
    loop {
        let (ns, ev) = reader
            .read_resolved_event()
            .map_err(|e| format!("the request is not well-formed XML: {e}"))?;
        let ns = match ns {
            ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
            _ => String::new(),
        };
        let (e, is_start) = match ev {
            Event::DocType(_) => return Err("DTDs are not allowed in SAML messages".into()),
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::Text(t) => {
                buf.push_str(&t.decode().map_err(|e| format!("bad text: {e}"))?);
                continue;
            }
            Event::CData(t) => {
                buf.push_str(&t.decode().map_err(|e| format!("bad text: {e}"))?);
                continue;
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| format!("bad reference: {e}"))?;
                if let Some(c) = r
                    .resolve_char_ref()
                    .map_err(|e| format!("bad reference: {e}"))?
                {
                    buf.push(c);
                } else if let Some(v) = quick_xml::escape::resolve_predefined_entity(&name) {
                    buf.push_str(v);
                } else {
                    return Err(format!("unknown entity &{name};"));
                }
                continue;
            }
            Event::End(_) => {
                if path.len() == 2 {
                    let value = buf.trim().to_owned();
                    match path[1].as_str() {
                        x if x == format!("{NS_SAML}|Issuer") => req.issuer = Some(value),
                        x if x == format!("{NS_SAML}|NameID") => req.name_id = Some(value),
                        x if x == format!("{NS_SAMLP}|SessionIndex") => {
                            req.session_index = Some(value)
                        }
                        _ => {}
                    }
                }
                buf.clear();
                path.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        buf.clear();
        let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let attrs: Vec<(String, String)> = e
            .attributes()
            .filter_map(Result::ok)
            .filter_map(|a| {
                let k = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
                let v = a.unescape_value().ok()?.into_owned();
                Some((k, v))
            })
            .collect();
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if path.is_empty() {
            if !req.kind.is_empty() {
                return Err("more than one root element".into());
            }
            if ns != NS_SAMLP {
                return Err("the root element is not in the SAML protocol namespace".into());
            }
            req.kind = local.clone();
            req.id = get("ID").ok_or("the request has no ID")?;
            req.destination = get("Destination");
            req.issue_instant = get("IssueInstant");
            req.acs_url = get("AssertionConsumerServiceURL");
            req.protocol_binding = get("ProtocolBinding");
            req.force_authn = get("ForceAuthn").is_some_and(|v| v == "true" || v == "1");
            req.is_passive = get("IsPassive").is_some_and(|v| v == "true" || v == "1");
            if get("Version").as_deref() != Some("2.0") {
                return Err("the request is not SAML 2.0".into());
            }
        } else if path.len() == 1 && local == "NameIDPolicy" && ns == NS_SAMLP {
            req.name_id_format = get("Format");
        } else if path.len() == 1 && local == "Signature" && ns == NS_DS {
            req.has_xml_signature = true;
        }
        if is_start {
            if path.len() == MAX_REQUEST_DEPTH {
                return Err(format!(
                    "the request nests elements deeper than {MAX_REQUEST_DEPTH} levels"
                ));
            }
            path.push(format!("{ns}|{local}"));
        }
    }
    if req.kind.is_empty() {
        return Err("the request is empty".into());
    }
    Ok(req)
}

/// What QSA takes from a service provider's metadata (SAML Metadata §2.4.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpMetadata {
    pub entity_id: String,
    /// AssertionConsumerService locations of the HTTP-POST binding, the default one first.
    pub acs_urls: Vec<String>,
    /// The first SingleLogoutService of a binding QSA speaks: (location, binding URN).
    pub slo: Option<(String, String)>,
    /// The signing certificate (DER, base64) of a KeyDescriptor for signing (or for any use).
    pub certificate: Option<String>,
    pub name_id_formats: Vec<String>,
    /// Whether the SP asks for signed assertions (informational).
    pub want_assertions_signed: bool,
}

/// Largest metadata document QSA reads.
pub const MAX_METADATA_BYTES: usize = 256 * 1024;
/// Deepest element nesting QSA reads in metadata (real documents nest about eight levels).
pub const MAX_METADATA_DEPTH: usize = 32;

/// Reads one SP's `EntityDescriptor`. Refuses DTDs, other roots, documents over
/// [`MAX_METADATA_BYTES`] or nested deeper than [`MAX_METADATA_DEPTH`], and SPs without an
/// HTTP-POST assertion consumer service.
pub fn parse_sp_metadata(xml: &str) -> Result<SpMetadata, String> {
    use quick_xml::name::ResolveResult;
    if xml.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "the metadata is larger than {MAX_METADATA_BYTES} bytes"
        ));
    }
    let mut reader = quick_xml::NsReader::from_str(xml);
    let mut md = SpMetadata::default();
    let mut path: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut seen_root = false;
    let mut in_sp = false;
    let mut in_signing_key = false;
    // (is_default, index, location)
    let mut acs: Vec<(bool, u32, usize, String)> = Vec::new();
    loop {
        let (ns, ev) = reader
            .read_resolved_event()
            .map_err(|e| format!("the metadata is not well-formed XML: {e}"))?;
        let ns = match ns {
            ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
            _ => String::new(),
        };
        let (e, is_start) = match ev {
            Event::DocType(_) => return Err("DTDs are not allowed in metadata".into()),
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::Text(t) => {
                buf.push_str(&t.decode().map_err(|e| format!("bad text: {e}"))?);
                continue;
            }
            Event::CData(t) => {
                buf.push_str(&t.decode().map_err(|e| format!("bad text: {e}"))?);
                continue;
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| format!("bad reference: {e}"))?;
                if let Some(c) = r
                    .resolve_char_ref()
                    .map_err(|e| format!("bad reference: {e}"))?
                {
                    buf.push(c);
                } else if let Some(v) = quick_xml::escape::resolve_predefined_entity(&name) {
                    buf.push_str(v);
                } else {
                    return Err(format!("unknown entity &{name};"));
                }
                continue;
            }
            Event::End(_) => {
                let ended = path.pop().unwrap_or_default();
                if ended == format!("{NS_DS}|X509Certificate")
                    && in_sp
                    && in_signing_key
                    && md.certificate.is_none()
                {
                    let c: String = buf.split_whitespace().collect();
                    if !c.is_empty() {
                        md.certificate = Some(c);
                    }
                } else if ended == format!("{NS_MD}|NameIDFormat") && in_sp {
                    let f = buf.trim().to_owned();
                    if !f.is_empty() {
                        md.name_id_formats.push(f);
                    }
                } else if ended == format!("{NS_MD}|KeyDescriptor") {
                    in_signing_key = false;
                } else if ended == format!("{NS_MD}|SPSSODescriptor") {
                    in_sp = false;
                }
                buf.clear();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        buf.clear();
        let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let attrs: Vec<(String, String)> = e
            .attributes()
            .filter_map(Result::ok)
            .filter_map(|a| {
                let k = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
                let v = a.unescape_value().ok()?.into_owned();
                Some((k, v))
            })
            .collect();
        let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if path.is_empty() {
            if seen_root {
                return Err("more than one root element".into());
            }
            seen_root = true;
            if ns != NS_MD || local != "EntityDescriptor" {
                return Err(
                    "the metadata's root must be one md:EntityDescriptor (not an EntitiesDescriptor)"
                        .into(),
                );
            }
            md.entity_id = get("entityID").ok_or("the EntityDescriptor has no entityID")?;
        } else if ns == NS_MD && local == "SPSSODescriptor" && path.len() == 1 {
            in_sp = true;
            md.want_assertions_signed =
                get("WantAssertionsSigned").is_some_and(|v| v == "true" || v == "1");
        } else if in_sp && ns == NS_MD && local == "KeyDescriptor" {
            in_signing_key = get("use").is_none_or(|u| u == "signing");
        } else if in_sp && ns == NS_MD && local == "AssertionConsumerService" {
            if get("Binding").as_deref() == Some(BINDING_POST) {
                let location =
                    get("Location").ok_or("an AssertionConsumerService has no Location")?;
                let index = get("index")
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(u32::MAX);
                let default = get("isDefault").is_some_and(|v| v == "true" || v == "1");
                acs.push((default, index, acs.len(), location));
            }
        } else if in_sp && ns == NS_MD && local == "SingleLogoutService" && md.slo.is_none() {
            let binding = get("Binding").unwrap_or_default();
            if binding == BINDING_REDIRECT || binding == BINDING_POST {
                let location = get("ResponseLocation")
                    .or_else(|| get("Location"))
                    .ok_or("a SingleLogoutService has no Location")?;
                md.slo = Some((location, binding));
            }
        }
        if is_start {
            if path.len() == MAX_METADATA_DEPTH {
                return Err(format!(
                    "the metadata nests elements deeper than {MAX_METADATA_DEPTH} levels"
                ));
            }
            path.push(format!("{ns}|{local}"));
        }
    }
    if !seen_root {
        return Err("the metadata is empty".into());
    }
    // The default first, then by index, then in document order.
    acs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    md.acs_urls = acs.into_iter().map(|a| a.3).collect();
    if md.acs_urls.is_empty() {
        return Err(
            "the metadata has no SPSSODescriptor with an HTTP-POST AssertionConsumerService".into(),
        );
    }
    Ok(md)
}

/// The signed octets of the HTTP-Redirect binding (SAML Bindings §3.4.4.1): the raw,
/// still URL-encoded `SAMLRequest`/`SAMLResponse`, `RelayState` and `SigAlg` pairs of the query
/// as received, in that order.
pub fn redirect_signed_octets(raw_query: &str, message_param: &str) -> Option<String> {
    let pairs: Vec<(&str, &str)> = raw_query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let mut out = format!("{message_param}={}", get(message_param)?);
    if let Some(rs) = get("RelayState") {
        out.push_str(&format!("&RelayState={rs}"));
    }
    out.push_str(&format!("&SigAlg={}", get("SigAlg")?));
    Some(out)
}

/// Verifies an RSA-SHA256 signature with the public key of a DER certificate (base64).
pub fn verify_rsa_sha256(
    certificate_b64: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::signature::Verifier as _;
    use x509_cert::der::{Decode as _, Encode as _};
    let der = STANDARD
        .decode(certificate_b64.trim())
        .map_err(|_| "the registered certificate is not base64".to_owned())?;
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|e| format!("the registered certificate does not parse: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    let key = rsa::RsaPublicKey::from_public_key_der(&spki)
        .map_err(|_| "the registered certificate is not an RSA key".to_owned())?;
    let sig = rsa::pkcs1v15::Signature::try_from(signature)
        .map_err(|_| "the signature is malformed".to_owned())?;
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
        .verify(message, &sig)
        .map_err(|_| "the signature does not verify".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_the_canonical_one() {
        assert_eq!(text("a&b<c>d\"e\r"), "a&amp;b&lt;c&gt;d\"e&#xD;");
        assert_eq!(
            attr("a&b<c>d\"e\t\n\r"),
            "a&amp;b&lt;c>d&quot;e&#x9;&#xA;&#xD;"
        );
    }

    #[test]
    fn requests_parse_and_dtds_are_refused() {
        let xml = format!(
            "<samlp:AuthnRequest xmlns:samlp=\"{NS_SAMLP}\" xmlns:saml=\"{NS_SAML}\" ID=\"_a1\" Version=\"2.0\" \
AssertionConsumerServiceURL=\"https://sp/acs\"><saml:Issuer> https://sp </saml:Issuer>\
<samlp:NameIDPolicy Format=\"urn:x\"/></samlp:AuthnRequest>"
        );
        let r = parse_request(&xml).unwrap();
        assert_eq!(r.kind, "AuthnRequest");
        assert_eq!(r.id, "_a1");
        assert_eq!(r.issuer.as_deref(), Some("https://sp"));
        assert_eq!(r.acs_url.as_deref(), Some("https://sp/acs"));
        assert_eq!(r.name_id_format.as_deref(), Some("urn:x"));
        let dtd = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{xml}");
        assert!(parse_request(&dtd).unwrap_err().contains("DTD"));
        let wrong_ns = xml.replace(NS_SAMLP, "urn:other");
        assert!(parse_request(&wrong_ns).is_err());
    }

    #[test]
    fn the_signature_goes_after_the_issuer_and_signed_info_inherits_ds() {
        let u = logout_response("_r", "https://idp", "https://sp/slo", "_q", Utc::now());
        let signed = u.with_signature(b"sig", "CERT");
        let at = signed.find("<ds:Signature").unwrap();
        assert!(signed[..at].ends_with("</saml:Issuer>"));
        assert!(signed.contains("<ds:SignedInfo><ds:CanonicalizationMethod"));
        assert!(u
            .to_sign()
            .starts_with(&format!("<ds:SignedInfo xmlns:ds=\"{NS_DS}\">")));
    }

    #[test]
    fn deep_or_large_requests_are_refused() {
        let nested = |n: usize| {
            format!(
                "<samlp:AuthnRequest xmlns:samlp=\"{NS_SAMLP}\" ID=\"_a\" Version=\"2.0\">{}{}</samlp:AuthnRequest>",
                "<x>".repeat(n),
                "</x>".repeat(n)
            )
        };
        // Past the size limit first; within it, past the depth limit.
        assert!(parse_request(&nested(20_000))
            .unwrap_err()
            .contains("too large"));
        assert!(parse_request(&nested(40))
            .unwrap_err()
            .contains("deeper than 32"));
        assert!(parse_request(&nested(30)).is_ok());
        // A DEFLATE bomb inflates no further than the limit.
        use std::io::Write as _;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![b'<'; 10 << 20]).unwrap();
        let bomb = STANDARD.encode(z.finish().unwrap());
        assert!(inflate_redirect(&bomb).unwrap_err().contains("too large"));
    }

    #[test]
    fn sp_metadata_gives_entity_acs_slo_and_certificate() {
        let md = format!(
            "<md:EntityDescriptor xmlns:md=\"{NS_MD}\" xmlns:ds=\"{NS_DS}\" entityID=\"https://sp\">\
<md:SPSSODescriptor protocolSupportEnumeration=\"{NS_SAMLP}\" WantAssertionsSigned=\"true\">\
<md:KeyDescriptor use=\"encryption\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>ENC</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\
<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>\n SIG\n NED </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\
<md:SingleLogoutService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:SOAP\" Location=\"https://sp/soap\"/>\
<md:SingleLogoutService Binding=\"{BINDING_REDIRECT}\" Location=\"https://sp/slo\"/>\
<md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>\
<md:AssertionConsumerService Binding=\"{BINDING_REDIRECT}\" Location=\"https://sp/no\" index=\"0\"/>\
<md:AssertionConsumerService Binding=\"{BINDING_POST}\" Location=\"https://sp/b\" index=\"2\"/>\
<md:AssertionConsumerService Binding=\"{BINDING_POST}\" Location=\"https://sp/a\" index=\"1\"/>\
<md:AssertionConsumerService Binding=\"{BINDING_POST}\" Location=\"https://sp/default\" index=\"3\" isDefault=\"true\"/>\
</md:SPSSODescriptor></md:EntityDescriptor>"
        );
        let m = parse_sp_metadata(&md).unwrap();
        assert_eq!(m.entity_id, "https://sp");
        assert_eq!(
            m.acs_urls,
            ["https://sp/default", "https://sp/a", "https://sp/b"]
        );
        assert_eq!(
            m.slo,
            Some(("https://sp/slo".to_owned(), BINDING_REDIRECT.to_owned()))
        );
        assert_eq!(m.certificate.as_deref(), Some("SIGNED"));
        assert!(m.want_assertions_signed);
        let no_post = md.replace(BINDING_POST, "urn:x");
        assert!(parse_sp_metadata(&no_post)
            .unwrap_err()
            .contains("HTTP-POST"));
        let many =
            format!("<md:EntitiesDescriptor xmlns:md=\"{NS_MD}\">{md}</md:EntitiesDescriptor>");
        assert!(parse_sp_metadata(&many).is_err());
    }

    #[test]
    fn status_responses_carry_both_codes_and_no_assertion() {
        let u = status_response(
            "_r",
            "https://idp",
            "https://sp/acs",
            Some("_q"),
            Utc::now(),
            STATUS_RESPONDER,
            Some(STATUS_NO_PASSIVE),
            "not <signed> in",
        );
        let x = u.unsigned();
        assert!(x.contains(&format!(
            "<samlp:StatusCode Value=\"{STATUS_RESPONDER}\"><samlp:StatusCode Value=\"{STATUS_NO_PASSIVE}\">"
        )));
        assert!(x.contains("InResponseTo=\"_q\""));
        assert!(x.contains("not &lt;signed&gt; in"));
        assert!(!x.contains("Assertion"));
    }

    #[test]
    fn redirect_queries_encode_like_url_encoders_do() {
        let q = redirect_query("SAMLResponse", "a+b/c=", Some("r s&t"));
        assert_eq!(
            q,
            "SAMLResponse=a%2Bb%2Fc%3D&RelayState=r%20s%26t&SigAlg=http%3A%2F%2Fwww.w3.org%2F2001%2F04%2Fxmldsig-more%23rsa-sha256"
        );
        let xml = "<samlp:LogoutResponse/>";
        let back = inflate_redirect(&deflate_redirect(xml)).unwrap();
        assert_eq!(back, xml);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn xml_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just(format!(
                    "<samlp:AuthnRequest xmlns:samlp=\"{NS_SAMLP}\" ID=\"_a\" Version=\"2.0\">"
                )),
                Just("</samlp:AuthnRequest>".to_owned()),
                Just(format!("<saml:Issuer xmlns:saml=\"{NS_SAML}\">")),
                Just("</saml:Issuer>".to_owned()),
                Just("<x>".to_owned()),
                Just("</x>".to_owned()),
                Just("<y/>".to_owned()),
                Just("&amp;".to_owned()),
                Just("&#x0;".to_owned()),
                Just("&#xFFFFFFFF;".to_owned()),
                Just("&bogus;".to_owned()),
                Just("<![CDATA[".to_owned()),
                Just("]]>".to_owned()),
                Just("<!DOCTYPE".to_owned()),
                Just("<?xml version=\"1.0\"?>".to_owned()),
                Just(" a=\"".to_owned()),
                Just("text".to_owned()),
                Just("<".to_owned()),
                Just(">".to_owned()),
            ];
            prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn any_request_is_parsed_or_refused_never_a_panic(s in any::<String>()) {
                let _ = parse_request(&s);
                let _ = inflate_redirect(&s);
                let _ = decode_post(&s);
            }

            #[test]
            fn xml_shaped_requests_are_parsed_or_refused(s in xml_like()) {
                let _ = parse_request(&s);
                let _ = decode_post(&STANDARD.encode(&s));
            }

            #[test]
            fn any_metadata_is_parsed_or_refused_never_a_panic(s in xml_like(), t in any::<String>()) {
                let _ = parse_sp_metadata(&s);
                let _ = parse_sp_metadata(&t);
                let _ = parse_sp_metadata(&s.replace("samlp:AuthnRequest", "md:EntityDescriptor").replace(NS_SAMLP, NS_MD));
            }

            #[test]
            fn any_deflated_bytes_are_inflated_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = inflate_redirect(&STANDARD.encode(&bytes));
            }
        }
    }
}
