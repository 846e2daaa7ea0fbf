package kubetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Claims are the claims of a service-account token as kube-apiserver issues
// them. Times are Unix seconds.
type Claims struct {
	Issuer     string            `json:"iss,omitempty"`
	Subject    string            `json:"sub,omitempty"`
	Audience   []string          `json:"aud,omitempty"`
	Expiry     int64             `json:"exp,omitempty"`
	NotBefore  int64             `json:"nbf,omitempty"`
	IssuedAt   int64             `json:"iat,omitempty"`
	ID         string            `json:"jti,omitempty"`
	Kubernetes *KubernetesClaims `json:"kubernetes.io,omitempty"`
}

// KubernetesClaims is the private "kubernetes.io" claim: the objects a token is
// bound to. kube-apiserver rejects the token once one of them is gone or has
// another UID.
type KubernetesClaims struct {
	Namespace      string     `json:"namespace"`
	ServiceAccount ObjectRef  `json:"serviceaccount"`
	Pod            *ObjectRef `json:"pod,omitempty"`
}

// ObjectRef names an object a token is bound to.
type ObjectRef struct {
	Name string    `json:"name"`
	UID  types.UID `json:"uid"`
}

// PodToken asks the apiserver (TokenRequest, as the admin) for a token of
// service account sa in namespace ns, bound to the pod, for one audience. The
// apiserver refuses a ttl under 10 minutes.
func (c *Cluster) PodToken(
	t testing.TB, ns, sa, pod, audience string, ttl time.Duration,
) string {
	t.Helper()
	seconds := int64(ttl / time.Second)
	req := &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &seconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind:       "Pod",
				APIVersion: "v1",
				Name:       pod,
			},
		},
	}
	resp, err := c.Client.CoreV1().ServiceAccounts(ns).
		CreateToken(t.Context(), sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token for pod %s/%s: %v", ns, pod, err)
	}
	return resp.Status.Token
}

// PodClaims returns the claims of a token for service account sa in namespace
// ns, bound to the pod, as TokenRequest would issue it: one audience, issued now,
// valid for ttl. It reads the UIDs of the service account and the pod from the
// apiserver. Change the claims as a test needs, then sign them with SignToken.
func (c *Cluster) PodClaims(
	t testing.TB, ns, sa, pod, audience string, ttl time.Duration,
) Claims {
	t.Helper()
	ctx := t.Context()
	account, err := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("kubetest: get service account %s/%s: %v", ns, sa, err)
	}
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("kubetest: get pod %s/%s: %v", ns, pod, err)
	}
	now := time.Now()
	return Claims{
		Issuer:    c.Issuer,
		Subject:   "system:serviceaccount:" + ns + ":" + sa,
		Audience:  []string{audience},
		Expiry:    now.Add(ttl).Unix(),
		NotBefore: now.Unix(),
		IssuedAt:  now.Unix(),
		Kubernetes: &KubernetesClaims{
			Namespace:      ns,
			ServiceAccount: ObjectRef{Name: sa, UID: account.UID},
			Pod:            &ObjectRef{Name: pod, UID: p.UID},
		},
	}
}

// SignToken signs claims (a Claims, or anything else that encodes to a JSON
// object) with the cluster's service-account key, in the compact JWS form and
// with the key ID that kube-apiserver gives its own tokens. Whether the
// apiserver then accepts the token depends on the claims alone.
func (c *Cluster) SignToken(t testing.TB, claims any) string {
	t.Helper()
	token, err := signJWT(c.SigningKey, c.keyID, claims)
	if err != nil {
		t.Fatalf("kubetest: sign token: %v", err)
	}
	return token
}

// signJWT builds a compact JWS. Only ECDSA P-256 keys (ES256) are supported,
// which is what start.sh generates.
func signJWT(key crypto.Signer, keyID string, claims any) (string, error) {
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok || ecKey.Curve != elliptic.P256() {
		return "", fmt.Errorf("signing key is a %T, want an ECDSA P-256 key", key)
	}
	header, err := json.Marshal(map[string]string{"alg": "ES256", "kid": keyID})
	if err != nil {
		return "", fmt.Errorf("encode header: %w", err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode claims: %w", err)
	}
	enc := base64.RawURLEncoding
	signingInput := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, ecKey, digest[:])
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	// JWS wants R and S as two 32-byte big-endian numbers, not ASN.1.
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signingInput + "." + enc.EncodeToString(sig), nil
}

// keyIDOf computes the key ID kube-apiserver puts in the tokens it signs: the
// unpadded base64url SHA-256 of the public key's PKIX DER encoding.
func keyIDOf(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// readSigningKey reads a PEM private key, PKCS #8 or SEC 1.
func readSigningKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("signing key: no PEM block")
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("signing key: unexpected PEM block %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse signing key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("signing key: %T cannot sign", key)
	}
	return signer, nil
}
