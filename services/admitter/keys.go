package admitter

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/tallyhq/tally/shared/httpx"
)

// keyFileBytesMax bounds the API key file.
const keyFileBytesMax = 1 << 20

// EdgeKeyPrefix starts every edge API key configured as an hmac entry.
const EdgeKeyPrefix = "tk_"

// keyOptions are the keyring options of ADMITTER_KEY_HASH_SECRET; th may be nil.
func (c Config) keyOptions(th *httpx.AuthThrottle) httpx.KeyringOptions {
	return httpx.KeyringOptions{HashSecret: []byte(c.KeyHashSecret), TokenPrefix: EdgeKeyPrefix, Throttle: th}
}

// parseKeys parses "id:hmac:<hex>" and legacy "id:sha256hex" entries separated by commas or
// newlines; lines starting with # are comments.
func parseKeys(s string, o httpx.KeyringOptions) (*httpx.Keyring, error) {
	var parts []string
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts = append(parts, line)
	}
	return httpx.ParseKeyringWith(strings.Join(parts, ","), o)
}

func loadKeyFile(path string, o httpx.KeyringOptions) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if len(b) > keyFileBytesMax {
		return "", fmt.Errorf("%s: larger than %d bytes", path, keyFileBytesMax)
	}
	if _, err := parseKeys(string(b), o); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return string(b), nil
}

// ReloadKeys rebuilds the keyring from ADMITTER_API_KEYS and the key file. On error the
// previous keyring stays in force (a bad edit never locks every client out).
func (s *Service) ReloadKeys() error {
	all := s.cfg.APIKeys
	if s.cfg.APIKeysFile != "" {
		ver, err := httpx.FileVersion(s.cfg.APIKeysFile)
		if err != nil {
			return fmt.Errorf("admitter: key file: %w", err)
		}
		f, err := loadKeyFile(s.cfg.APIKeysFile, s.cfg.keyOptions(nil))
		if err != nil {
			return fmt.Errorf("admitter: key file: %w", err)
		}
		all += "\n" + f
		s.keyStamp.Mark(ver)
	}
	k, err := parseKeys(strings.ReplaceAll(all, ",", "\n"), s.cfg.keyOptions(s.authThrottle))
	if err != nil {
		return fmt.Errorf("admitter: keys: %w", err)
	}
	s.keys.Store(k)
	return nil
}

// ReloadOn reloads the keys (ReloadKeys) each time a signal arrives on sig, until ctx ends or
// sig is closed: cmd/admitter feeds it SIGHUP. A failed reload is logged and the previous
// keys stay in force.
func (s *Service) ReloadOn(ctx context.Context, sig <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case v, ok := <-sig:
			if !ok {
				return
			}
			if err := s.ReloadKeys(); err != nil {
				s.log.Error("api keys reload failed; previous keys stay", "signal", fmt.Sprint(v), "err", err)
			} else {
				s.log.Info("api keys reloaded", "signal", fmt.Sprint(v), "keys", s.keys.Load().Len())
			}
		}
	}
}

// keyFileChanged reports whether the key file's modification time or size changed.
func (s *Service) keyFileChanged() bool {
	_, changed := s.keyStamp.Changed(s.cfg.APIKeysFile)
	return changed
}
