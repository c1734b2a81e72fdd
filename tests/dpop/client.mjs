// An independent OAuth client, panva's oauth4webapi (which implements RFC 9449), using DPoP
// against a running Quantus server: the authorization code exchange of a public client
// (answering the server's use_dpop_nonce challenge), userinfo, a /v1 route, a refresh with
// the same key, and the bound token refused as a plain Bearer token.
//
// Run by tests/it/dpop.rs, which signs the person in and hands over the redirect:
//   QUANTUS_URL CLIENT_ID REDIRECT_URI CALLBACK CODE_VERIFIER STATE ORG
// Prints one JSON line with what it saw (never a token).

import * as oauth from 'oauth4webapi';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

const issuer = new URL(env('QUANTUS_URL'));
// The test server speaks plain HTTP on the loopback interface.
const insecure = { [oauth.allowInsecureRequests]: true };

const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { ...insecure, algorithm: 'oidc' }),
);
// oauth4webapi signs with an Ed25519 key as `alg: Ed25519` (RFC 9864's fully-specified name).
if (!as.dpop_signing_alg_values_supported?.includes('Ed25519')) {
  throw new Error('discovery does not advertise Ed25519 for DPoP');
}
const client = { client_id: env('CLIENT_ID'), id_token_signed_response_alg: 'EdDSA' };
const clientAuth = oauth.None();

const keyPair = await oauth.generateKeyPair('Ed25519');
const DPoP = oauth.DPoP(client, keyPair);
const report = {
  key: keyPair.privateKey.algorithm.name,
  jkt: await DPoP.calculateThumbprint(),
  nonce_challenges: 0,
};

// RFC 9449 §8: a request refused with use_dpop_nonce is repeated once with the nonce the
// handle took from the DPoP-Nonce header.
async function withNonceRetry(send, process) {
  try {
    return await process(await send());
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err;
    report.nonce_challenges += 1;
    return await process(await send());
  }
}

const params = oauth.validateAuthResponse(as, client, new URL(env('CALLBACK')), env('STATE'));
const tokens = await withNonceRetry(
  () =>
    oauth.authorizationCodeGrantRequest(
      as, client, clientAuth, params, env('REDIRECT_URI'), env('CODE_VERIFIER'),
      { ...insecure, DPoP },
    ),
  (response) => oauth.processAuthorizationCodeResponse(as, client, response, { expectedNonce: 'n-1' }),
);
report.token_type = tokens.token_type;
const claims = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
report.access_cnf_jkt = claims(tokens.access_token).cnf?.jkt;
const sub = oauth.getValidatedIdTokenClaims(tokens).sub;

const info = await oauth.processUserInfoResponse(
  as, client, sub,
  await oauth.userInfoRequest(as, client, tokens.access_token, { ...insecure, DPoP }),
);
report.userinfo_sub = info.sub;

const org = new URL(`/v1/organizations/${env('ORG')}`, issuer);
const resource = await oauth.protectedResourceRequest(
  tokens.access_token, 'GET', org, new Headers(), null, { ...insecure, DPoP },
);
if (resource.status !== 200) throw new Error(`GET ${org.pathname}: ${resource.status} ${await resource.text()}`);
report.organization = (await resource.json()).id;

const bearer = await fetch(org, { headers: { authorization: `Bearer ${tokens.access_token}` } });
report.bearer_refused = bearer.status;
report.bearer_challenge = bearer.headers.get('www-authenticate')?.split(' ')[0];

const refreshed = await withNonceRetry(
  () => oauth.refreshTokenGrantRequest(as, client, clientAuth, tokens.refresh_token, { ...insecure, DPoP }),
  (response) => oauth.processRefreshTokenResponse(as, client, response),
);
report.refreshed_token_type = refreshed.token_type;
report.refreshed_cnf_jkt = claims(refreshed.access_token).cnf?.jkt;

// The refresh token in the hands of a client with another key (of another type too) is
// refused.
const thief = oauth.DPoP(client, await oauth.generateKeyPair('ES256'));
try {
  await withNonceRetry(
    () => oauth.refreshTokenGrantRequest(as, client, clientAuth, refreshed.refresh_token, { ...insecure, DPoP: thief }),
    (response) => oauth.processRefreshTokenResponse(as, client, response),
  );
  report.stolen_refresh = 'accepted';
} catch (err) {
  report.stolen_refresh = err.error ?? String(err);
}

console.log(JSON.stringify(report));
