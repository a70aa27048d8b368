package main

import (
	"context"
	"crypto/ecdsa"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pushproxy/pushproxy/wakeup/fakeapns"
	"github.com/pushproxy/pushproxy/wakeup/fakefcm"
	"github.com/pushproxy/pushproxy/wakeup/fakewebpush"
)

// fakesConfig is what `pushproxy fakes` is told.
type fakesConfig struct {
	Dir           string
	APNsListen    string
	FCMListen     string
	WebPushListen string
	KeyID         string
	TeamID        string
	Topic         string
	Project       string
}

func (c *fakesConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Dir, "dir", "pushproxy-fakes", "where to write the APNs key, the CA certificate and the FCM credentials")
	fs.StringVar(&c.APNsListen, "apns-listen", "127.0.0.1:2197", "address of the fake APNs (HTTP/2 over TLS)")
	fs.StringVar(&c.FCMListen, "fcm-listen", "127.0.0.1:9099", "address of the fake FCM (HTTP)")
	fs.StringVar(&c.WebPushListen, "webpush-listen", "127.0.0.1:8790", "address of the fake Web Push service (HTTP; subscriptions from POST /subscriptions)")
	fs.StringVar(&c.KeyID, "key-id", "FAKEKEY001", "APNs key id of the generated key")
	fs.StringVar(&c.TeamID, "team-id", "FAKETEAM01", "APNs team id")
	fs.StringVar(&c.Topic, "topic", "", "the only APNs topic accepted (empty: any)")
	fs.StringVar(&c.Project, "project", "pushproxy-fake", "FCM project id")
}

func fakesCommand() command {
	return command{
		name:    "fakes",
		summary: "run a fake APNs and a fake FCM, to try wake-ups without real credentials",
		about: `Runs a fake APNs and a fake FCM that check every push the way Apple and Google do, and
prints each one they receive. For integrating and testing apps without real credentials: it
writes the keys and credentials to --dir and prints how to point "pushproxy serve" at them.`,
		setup: func(fs *flag.FlagSet) runFunc {
			var cfg fakesConfig
			cfg.flags(fs)
			return func(ctx context.Context, _ []string, stdout, stderr io.Writer, _ func(string) string) int {
				if err := fakes(ctx, cfg, stdout); err != nil {
					fmt.Fprintln(stderr, "pushproxy fakes:", err)
					return 1
				}
				return 0
			}
		},
	}
}

func fakes(ctx context.Context, cfg fakesConfig, stdout io.Writer) error {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyFile := filepath.Join(dir, "AuthKey_"+cfg.KeyID+".p8")
	pub, err := fakeapns.GenerateAuthKey(keyFile)
	if err != nil {
		return err
	}
	var topics []string
	if cfg.Topic != "" {
		topics = []string{cfg.Topic}
	}
	apns := fakeapns.New(fakeapns.Options{Keys: map[string]*ecdsa.PublicKey{cfg.KeyID: pub}, TeamID: cfg.TeamID, Topics: topics, Addr: cfg.APNsListen})
	if err := apns.Start(); err != nil {
		return fmt.Errorf("fake apns: %w", err)
	}
	defer apns.Close()
	caFile := filepath.Join(dir, "ca.pem")
	if err := apns.CA().WriteCertFile(caFile); err != nil {
		return err
	}
	fcm := fakefcm.New(fakefcm.Options{ProjectID: cfg.Project, Addr: cfg.FCMListen})
	if err := fcm.Start(); err != nil {
		return fmt.Errorf("fake fcm: %w", err)
	}
	defer fcm.Close()
	credFile := filepath.Join(dir, "fcm-credentials.json")
	if err := fcm.WriteCredentials(credFile); err != nil {
		return err
	}
	wp := fakewebpush.New(fakewebpush.Options{Addr: cfg.WebPushListen})
	if err := wp.Start(); err != nil {
		return fmt.Errorf("fake webpush: %w", err)
	}
	defer wp.Close()
	topic := cfg.Topic
	if topic == "" {
		topic = "com.example.app"
	}
	fmt.Fprintf(stdout, `fake APNs: %s (HTTP/2, TLS; CA certificate %s)
fake FCM:  %s (project %s)
fake Web Push: %s (subscribe: POST %s/subscriptions)

Point pushproxy at them:
  SSL_CERT_FILE=%s \
  PUSHPROXY_APNS_URL=%s PUSHPROXY_APNS_KEY_FILE=%s \
  PUSHPROXY_APNS_KEY_ID=%s PUSHPROXY_APNS_TEAM_ID=%s PUSHPROXY_APNS_TOPIC=%s \
  PUSHPROXY_FCM_URL=%s PUSHPROXY_FCM_CREDENTIALS_FILE=%s \
  PUSHPROXY_WEBPUSH_ENDPOINTS=%s \
  pushproxy serve

Pushes received:
`, apns.URL(), caFile, fcm.URL(), cfg.Project, wp.URL(), wp.URL(), caFile, apns.URL(), keyFile, cfg.KeyID, cfg.TeamID, topic, fcm.URL(), credFile, wp.URL())

	seenAPNs, seenFCM, seenWP := 0, 0, 0
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		ps := apns.Pushes()
		for _, p := range ps[seenAPNs:] {
			fmt.Fprintf(stdout, "%s apns %d %s token=%s… topic=%s type=%s priority=%s payload=%s\n",
				p.Time.Format(time.TimeOnly), p.Status, p.Reason, abbreviateToken(p.Token), p.Topic, p.PushType, p.Priority, p.Payload)
		}
		seenAPNs = len(ps)
		ms := fcm.Messages()
		for _, m := range ms[seenFCM:] {
			fmt.Fprintf(stdout, "%s fcm  %d %s token=%s… priority=%s data=%v\n",
				m.Time.Format(time.TimeOnly), m.Status, m.ErrorCode, abbreviateToken(m.Token), m.Android.Priority, m.Data)
		}
		seenFCM = len(ms)
		wms := wp.Messages()
		for _, m := range wms[seenWP:] {
			fmt.Fprintf(stdout, "%s webpush %d %s endpoint=%s… ttl=%d urgency=%s topic=%s payload=%s\n",
				time.Now().Format(time.TimeOnly), m.Status, m.Error, abbreviateToken(m.Endpoint[len(wp.URL()):]), m.TTL, m.Urgency, m.Topic, m.Payload)
		}
		seenWP = len(wms)
	}
}

// abbreviateToken shows enough of a device token to tell devices apart.
func abbreviateToken(t string) string {
	if len(t) > 8 {
		return t[:8]
	}
	return t
}
