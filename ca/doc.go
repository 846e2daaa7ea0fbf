// Package ca is meshca's certificate authority: it keeps the signing authorities
// (loaded from the store, or created on first start), builds the trust bundle, and
// issues X.509-SVIDs through one fixed pipeline:
//
//	check request → template from server policy → sign → parse back → check the
//	issued certificate → durable audit record → chain, leaf first
//
// A caller contributes only a validated SPIFFE ID, a public key and a requested TTL;
// everything else in the certificate comes from the CA's own policy.
//
//	authority, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st})
//	...
//	svid, err := authority.IssueX509SVID(ctx, ca.X509SVIDParams{
//		ID: id, PublicKey: key.Public(), TTL: time.Hour, Requester: "admin",
//	})
package ca
