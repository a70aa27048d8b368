package main

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/pushproxy/pushproxy/wakeup"
)

// vapidKeyFileName is the VAPID key file the local-Postgres mode keeps in its data directory.
const vapidKeyFileName = "vapid-private-key"

// localVAPIDSubject is the VAPID contact of the local-Postgres mode when none is given.
const localVAPIDSubject = "mailto:webpush@pushproxy.invalid"

// webPushConfig is how serve sends Web Push.
type webPushConfig struct {
	Endpoints listFlag
	KeyFile   string
	Subject   string
}

func (c *webPushConfig) flags(fs *flag.FlagSet) {
	c.Endpoints = append(listFlag(nil), wakeup.DefaultWebPushEndpoints...)
	fs.Var(&c.Endpoints, "webpush-endpoints", "push services a Web Push subscription's endpoint may name: comma-separated hosts, host:port, *.domain, or http://host:port for plain http (names are dialed at public addresses only; list an address, e.g. http://127.0.0.1:8790, for a private one)")
	fs.StringVar(&c.KeyFile, "vapid-private-key-file", "", "Web Push: the VAPID private key (RFC 8292), base64url as web-push generate-vapid-keys prints it, or a PEM EC P-256 key; empty with the local Postgres: "+vapidKeyFileName+" in --data-dir, made on first start; empty otherwise: Web Push devices are not woken")
	fs.StringVar(&c.Subject, "vapid-subject", "", "Web Push: the contact in the VAPID token, a mailto: address or https: URL (required with --vapid-private-key-file)")
}

// webPush is what serve's parts need of Web Push.
type webPush struct {
	Sender    *wakeup.WebPush // nil: no VAPID key
	Endpoints *wakeup.WebPushEndpoints
	PublicKey string // the VAPID public key, base64url ("" without a key)
}

// open parses the endpoints and, with a VAPID key, makes the sender. Its client dials only
// the listed push services (wakeup.WebPushEndpoints.Client).
func (c *webPushConfig) open(ctx context.Context, log *slog.Logger, local bool, dataDir string) (webPush, error) {
	var wp webPush
	var err error
	if wp.Endpoints, err = wakeup.ParseWebPushEndpoints(c.Endpoints); err != nil {
		return wp, fmt.Errorf("--webpush-endpoints: %w", err)
	}
	file, subject := c.KeyFile, c.Subject
	switch {
	case file == "" && !local:
		log.WarnContext(ctx, "no VAPID key (--vapid-private-key-file): Web Push devices will not be woken")
		return wp, nil
	case file == "":
		file = filepath.Join(dataDir, vapidKeyFileName)
		if subject == "" {
			subject = localVAPIDSubject
		}
		created, err := vapidKeyOrCreate(file)
		if err != nil {
			return wp, fmt.Errorf("vapid key: %w", err)
		}
		if created {
			log.InfoContext(ctx, "made a VAPID key for Web Push; back it up (subscriptions are bound to it)", slog.String("file", file))
		}
	case subject == "":
		return wp, errors.New("--vapid-private-key-file needs --vapid-subject (a mailto: address or https: URL push services can reach you at)")
	}
	priv, err := loadVAPIDKey(file)
	if err != nil {
		return wp, fmt.Errorf("--vapid-private-key-file: %w", err)
	}
	wp.PublicKey = base64.RawURLEncoding.EncodeToString(priv.PublicKey().Bytes())
	wp.Sender, err = wakeup.NewWebPush(wakeup.WebPushOptions{
		VAPIDPrivateKey: base64.RawURLEncoding.EncodeToString(priv.Bytes()),
		VAPIDPublicKey:  wp.PublicKey,
		Subscriber:      subject,
		Client:          wp.Endpoints.Client(),
	})
	if err != nil {
		return wp, err
	}
	return wp, nil
}

// loadVAPIDKey reads a VAPID private key: base64url (or standard base64) of the 32-byte
// P-256 scalar, or a PEM "EC PRIVATE KEY" (SEC 1) or "PRIVATE KEY" (PKCS #8).
func loadVAPIDKey(file string) (*ecdh.PrivateKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if block, _ := pem.Decode(b); block != nil {
		var k any
		switch block.Type {
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("a PEM %q block, want EC PRIVATE KEY or PRIVATE KEY", block.Type)
		}
		if err != nil {
			return nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, errors.New("not an EC key")
		}
		return ek.ECDH()
	}
	text := strings.TrimRight(strings.TrimSpace(string(b)), "=")
	raw, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(text); err != nil {
			return nil, errors.New("neither base64url of the key nor PEM")
		}
	}
	k, err := ecdh.P256().NewPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("not a P-256 private key: %w", err)
	}
	return k, nil
}

// vapidKeyOrCreate makes a VAPID key file at path unless there is one; it reports whether
// it made one.
func vapidKeyOrCreate(path string) (bool, error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	// The data directory: the local Postgres's server, run as the postgres user when we are
	// root, must pass through it (the key file itself is 0600).
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, err
	}
	if _, err := fmt.Fprintln(f, base64.RawURLEncoding.EncodeToString(k.Bytes())); err != nil {
		f.Close()
		return false, err
	}
	return true, f.Close()
}
