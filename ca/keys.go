package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"

	"go.step.sm/crypto/keyutil"
)

// KeyType names a key algorithm meshca can generate.
type KeyType string

// The key types meshca generates for authorities and workloads.
const (
	KeyECP256  KeyType = "ec-p256"
	KeyECP384  KeyType = "ec-p384"
	KeyRSA2048 KeyType = "rsa-2048"
	KeyRSA3072 KeyType = "rsa-3072"
	KeyEd25519 KeyType = "ed25519"
)

// minRSABits is the smallest RSA modulus accepted for any key.
const minRSABits = 2048

// maxRSABits bounds RSA subject keys, so a caller cannot make verifiers do silly work.
const maxRSABits = 8192

// GenerateKey creates a private key of the given type.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case KeyECP256:
		return keyutil.GenerateSigner("EC", "P-256", 0)
	case KeyECP384:
		return keyutil.GenerateSigner("EC", "P-384", 0)
	case KeyRSA2048:
		return keyutil.GenerateSigner("RSA", "", 2048)
	case KeyRSA3072:
		return keyutil.GenerateSigner("RSA", "", 3072)
	case KeyEd25519:
		return keyutil.GenerateSigner("OKP", "Ed25519", 0)
	default:
		return nil, fmt.Errorf("unknown key type %q: %w", kt, ErrInvalidRequest)
	}
}

// checkSubjectKey accepts ECDSA P-256 and P-384, Ed25519 and RSA of at least 2048
// bits, and returns the key usage a leaf for that key gets.
func checkSubjectKey(pub crypto.PublicKey) (x509.KeyUsage, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return 0, fmt.Errorf("ECDSA curve %s is not supported (use P-256 or P-384): %w",
				k.Curve.Params().Name, ErrInvalidRequest)
		}
		return x509.KeyUsageDigitalSignature, nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return 0, fmt.Errorf("malformed Ed25519 key: %w", ErrInvalidRequest)
		}
		return x509.KeyUsageDigitalSignature, nil
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return 0, fmt.Errorf("RSA key of %d bits is not supported (%d to %d): %w",
				bits, minRSABits, maxRSABits, ErrInvalidRequest)
		}
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil
	default:
		return 0, fmt.Errorf("public key type %T is not supported: %w", pub, ErrInvalidRequest)
	}
}

// publicKeysEqual reports whether two public keys are the same key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
