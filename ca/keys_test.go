package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"
)

func mustECKey(t *testing.T, curve string) crypto.PublicKey {
	t.Helper()
	c := map[string]elliptic.Curve{"P-224": elliptic.P224(), "P-521": elliptic.P521()}[curve]
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func mustRSAKey(t *testing.T, bits int) crypto.PublicKey {
	t.Helper()
	// The standard library refuses to generate keys under 1024 bits, which is fine:
	// 1024 is below meshca's minimum.
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}
