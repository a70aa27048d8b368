package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/pushproxy/pushproxy"
	"github.com/pushproxy/pushproxy/maintenance"
	"github.com/pushproxy/pushproxy/store"
	"github.com/pushproxy/pushproxy/wakeup"
)

// wakeConfig is the wake-up policy and the push credentials.
type wakeConfig struct {
	Debounce time.Duration
	Rewake   time.Duration
	Sched    wakeup.Options
	// Run by the maintenance leader (package maintenance).
	DeadGrace, History time.Duration

	APNs    wakeup.APNsOptions
	FCM     wakeup.FCMOptions
	WebPush webPushConfig
}

func (c *wakeConfig) flags(fs *flag.FlagSet) {
	d := wakeup.DefaultOptions
	fs.DurationVar(&c.Debounce, "wake-debounce", 2*time.Second, "wait this long after the first event of a burst before waking a device, so a flurry costs one push")
	fs.DurationVar(&c.Rewake, "wake-rewake", 15*time.Minute, "after a push the device did not answer by reading, send no other for this long")
	o := &c.Sched
	fs.IntVar(&o.BudgetAPNs, "wake-budget-apns", d.BudgetAPNs, "most APNs pushes per device per --wake-budget-window (Apple asks for a few background pushes an hour)")
	fs.IntVar(&o.BudgetFCM, "wake-budget-fcm", d.BudgetFCM, "most FCM pushes per device per --wake-budget-window")
	fs.IntVar(&o.BudgetWebPush, "wake-budget-webpush", d.BudgetWebPush, "most Web Push pushes per device per --wake-budget-window")
	fs.DurationVar(&o.BudgetWindow, "wake-budget-window", d.BudgetWindow, "the window of the per-device push budgets")
	fs.DurationVar(&o.Jitter, "wake-jitter", d.Jitter, "random delay up to this long added to wake-ups, so devices fed by one origin do not all wake at once")
	fs.DurationVar(&o.RetryBase, "wake-retry", d.RetryBase, "first retry delay of a push that failed with a server or network error (doubles per attempt)")
	fs.DurationVar(&o.RetryMax, "wake-retry-max", d.RetryMax, "longest retry delay of a failed push")
	fs.DurationVar(&o.PushTTL, "wake-push-ttl", d.PushTTL, "how long APNs, FCM and Web Push services keep an undelivered push (apns-expiration, FCM ttl, Web Push TTL)")
	dm := maintenance.DefaultOptions
	fs.DurationVar(&c.DeadGrace, "wake-dead-grace", dm.DeadGrace, "how long the streams of a device whose push token was reported dead are still held (the device is then deleted)")
	fs.DurationVar(&c.History, "wake-history", dm.WakeupHistory, "how long finished wake-ups are kept as history")
	fs.IntVar(&o.MaxInFlight, "wake-max-in-flight", d.MaxInFlight, "most pushes in flight at once")
	fs.IntVar(&o.ClaimBatch, "wake-claim-batch", d.ClaimBatch, "most wake-ups taken from the queue at once")
	fs.IntVar(&o.Dispatchers, "wake-dispatchers", d.Dispatchers, "claim-send-record loops run at once, so one batch's database round trips overlap another's sends")
	fs.DurationVar(&o.LeaseTTL, "wake-lease-ttl", d.LeaseTTL, "a wake-up claimed by an instance that died is sent by another after this")
	fs.StringVar(&o.AlertText, "wake-alert-text", "", "when set, urgent wake-ups to APNs are alert pushes with this text and mutable-content (background pushes cannot be high priority)")
	a := &c.APNs
	fs.StringVar(&a.KeyFile, "apns-key-file", "", "APNs token auth: the .p8 signing key")
	fs.StringVar(&a.KeyID, "apns-key-id", "", "APNs token auth: the key id")
	fs.StringVar(&a.TeamID, "apns-team-id", "", "APNs token auth: the team id")
	fs.StringVar(&a.CertFile, "apns-cert-file", "", "APNs certificate auth: the certificate (.p12 or PEM with its key)")
	fs.StringVar(&a.CertPassword, "apns-cert-password", "", "password of --apns-cert-file")
	fs.StringVar(&a.Topic, "apns-topic", "", "default APNs topic (the app's bundle id) for devices handed off without one")
	fs.StringVar(&a.URL, "apns-url", "", "APNs endpoint override, for tests and private gateways (trusted through the system roots; SSL_CERT_FILE works)")
	f := &c.FCM
	fs.StringVar(&f.CredentialsFile, "fcm-credentials-file", "", "FCM: the service-account credentials JSON file")
	fs.StringVar(&f.URL, "fcm-url", "", "FCM endpoint override, for tests")
	c.WebPush.flags(fs)
}

// policy is the scheduling policy the commit path applies.
func (c *wakeConfig) policy() *store.WakePolicy {
	return &store.WakePolicy{Debounce: c.Debounce, Jitter: c.Sched.Jitter, Rewake: c.Rewake}
}

// senders builds the push senders that have credentials; a platform without any gets its
// wake-ups skipped (outcome no-sender), which the log says at start-up.
//
// With a VAPID key (--vapid-private-key-file, or with the local Postgres one made in
// dataDir), Web Push devices are woken too; wp tells the API the push services allowed and
// the key web apps subscribe with.
func (c *wakeConfig) senders(ctx context.Context, log *slog.Logger, local bool, dataDir string) (_ map[string]wakeup.Sender, wp webPush, _ error) {
	senders := map[string]wakeup.Sender{}
	if c.APNs.KeyFile != "" || c.APNs.CertFile != "" {
		s, err := wakeup.NewAPNs(c.APNs)
		if err != nil {
			return nil, wp, fmt.Errorf("apns: %w", err)
		}
		senders[pushproxy.PlatformAPNs] = s
	} else {
		log.WarnContext(ctx, "no APNs credentials (--apns-key-file or --apns-cert-file): APNs devices will not be woken")
	}
	if c.FCM.CredentialsFile != "" {
		s, err := wakeup.NewFCM(ctx, c.FCM)
		if err != nil {
			return nil, wp, fmt.Errorf("fcm: %w", err)
		}
		senders[pushproxy.PlatformFCM] = s
	} else {
		log.WarnContext(ctx, "no FCM credentials (--fcm-credentials-file): FCM devices will not be woken")
	}
	wp, err := c.WebPush.open(ctx, log, local, dataDir)
	if err != nil {
		return nil, wp, err
	}
	if wp.Sender != nil {
		senders[pushproxy.PlatformWebPush] = wp.Sender
	}
	return senders, wp, nil
}
