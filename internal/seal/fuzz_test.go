package seal

import "testing"

// FuzzParse feeds the key file parser arbitrary content: it must refuse or return keys that
// seal and open, never panic.
func FuzzParse(f *testing.F) {
	k, _ := Generate()
	good, _ := k.Marshal()
	k2, _ := k.WithNewPrimary()
	two, _ := k2.Marshal()
	f.Add(good)
	f.Add(two)
	f.Add([]byte(`{"primaryKeyId": 1, "key": [{"keyId": 1, "status": "ENABLED", "outputPrefixType": "TINK"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := Parse(b)
		if err != nil {
			return
		}
		ct, err := k.Seal([]byte("x"), []byte("ad"))
		if err != nil {
			t.Fatalf("parsed keys do not seal: %v", err)
		}
		if pt, err := k.Open(ct, []byte("ad")); err != nil || string(pt) != "x" {
			t.Fatalf("parsed keys do not open what they sealed: %v", err)
		}
	})
}
