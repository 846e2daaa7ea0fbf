package ca

import (
	"crypto/rand"
	"fmt"
	"math/big"
)

// serialBytes is the serial length: 127 random bits, the top bit cleared so the DER
// integer is positive and fits the 20 octets RFC 5280 allows.
const serialBytes = 16

// newSerial returns a random, positive, non-zero serial number.
func newSerial() (*big.Int, error) {
	buf := make([]byte, serialBytes)
	for {
		if _, err := rand.Read(buf); err != nil {
			return nil, fmt.Errorf("failed to read random serial: %w", err)
		}
		buf[0] &= 0x7f
		n := new(big.Int).SetBytes(buf)
		// Fewer than 64 significant bits happens with probability 2^-63; retrying keeps
		// the promise of at least 64 bits without bias worth mentioning.
		if n.BitLen() >= 64 {
			return n, nil
		}
	}
}

// SerialHex writes a serial number as lowercase hex of its bytes, with the leading
// zero that `openssl x509 -serial` shows (which prints the same digits in upper case).
func SerialHex(n *big.Int) string { return fmt.Sprintf("%x", n.Bytes()) }
