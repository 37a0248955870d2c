package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("headless Chromium is required in CI (Debian: apt-get install chromium)")
	}
	t.Skip("no chromium on PATH (Debian: apt-get install chromium)")
	return ""
}

// TestDLQPageInChromium drives the DLQ web page in headless Chromium: sign
// in with the admin token, find the dead message in the list, open it and
// read its three failed attempts, check a screenshot of that page, then
// replay it with the page's button: the receiver gets it once and the
// replay is logged with the operator named at sign-in. A cross-origin
// form post is refused.
func TestDLQPageInChromium(t *testing.T) {
	exe := chromiumPath(t)
	rc := newReceiver(t, "X-Levee-Message-Id")
	rc.setFail(true)
	g := startGateway(t, asyncConfig(fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", filepath.Join(t.TempDir(), "levee.db")), rc.url))
	resp, body := doRequest(t, mustPost(t, g.base+"/async/partner", `{"charge":7}`))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("enqueue: %d %s", resp.StatusCode, body)
	}
	id := strings.TrimPrefix(resp.Header.Get("Location"), "/async/partner/")
	waitFor(t, "the message in the DLQ", func() bool {
		_, body := doRequest(t, mustGet(t, g.base+"/async/partner/"+id))
		return strings.Contains(body, `"dead"`)
	})
	admin := "http://" + g.srv.AdminAddr()

	// Without a session the page is the sign-in form, and a cross-origin
	// post is refused even with a valid-looking form.
	resp, body = doRequest(t, mustGet(t, admin+"/dlq/ui"))
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `name="token"`) || strings.Contains(body, id) {
		t.Fatalf("unauthenticated page: %d", resp.StatusCode)
	}
	xo, _ := http.NewRequest(http.MethodPost, admin+"/dlq/ui/partner/purge", strings.NewReader("all=true"))
	xo.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	xo.Header.Set("Sec-Fetch-Site", "cross-site")
	if resp, _ := doRequest(t, xo); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin post: %d, want 403", resp.StatusCode)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	defer cancelT()

	err := chromedp.Do(ctx,
		chromedp.Navigate(admin+"/dlq/ui"),
		chromedp.WaitVisible(`#token`),
		chromedp.SendKeys(`#token`, testAdminToken),
		chromedp.SendKeys(`#operator`, "ana"),
		chromedp.Click(`#signin`),
		chromedp.WaitVisible(`#messages`),
	)
	if err != nil {
		t.Fatalf("browser: sign in: %v", err)
	}
	listText := browserText(t, ctx, `#messages`)
	err = chromedp.Do(ctx,
		chromedp.Click(`a[href="/dlq/ui/partner/`+id+`"]`),
		chromedp.WaitVisible(`#history`),
	)
	if err != nil {
		t.Fatalf("browser: open the message: %v", err)
	}
	historyText := browserText(t, ctx, `#history`)
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	if !strings.Contains(listText, id) || !strings.Contains(listText, "max_attempts") {
		t.Fatalf("list shows:\n%s", listText)
	}
	if strings.Count(historyText, "boom: the receiver is down") != 3 || strings.Count(historyText, "500") < 3 {
		t.Fatalf("history shows:\n%s", historyText)
	}
	checkScreenshot(t, shot)

	rc.setFail(false)
	if err := chromedp.Do(ctx, chromedp.Click(`#replay`), chromedp.WaitVisible(`#done`)); err != nil {
		t.Fatalf("browser: replay: %v", err)
	}
	done := browserText(t, ctx, `#done`)
	if !strings.Contains(done, "replayed 1 message") {
		t.Fatalf("after replay the page says %q", done)
	}
	waitFor(t, "the replayed delivery", func() bool { return rc.count(id) == 1 })
	if !strings.Contains(g.logs.String(), `"operator":"ana (web)"`) {
		t.Fatal("the replay was not logged with the operator named at sign-in")
	}
}

// checkScreenshot decodes the page's screenshot and checks that it is the
// rendered page: full width, the dark header bar painted at the top, the
// white tables below it, and many distinct colours (text rendered).
func checkScreenshot(t *testing.T, shot []byte) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		if os.Getenv("LEVEE_KEEP_SCREENSHOT") != "" {
			_ = os.WriteFile(os.Getenv("LEVEE_KEEP_SCREENSHOT"), shot, 0o644)
		}
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if p := os.Getenv("LEVEE_KEEP_SCREENSHOT"); p != "" {
		_ = os.WriteFile(p, shot, 0o644)
	}
	b := img.Bounds()
	if b.Dx() < 1200 || b.Dy() < 400 {
		t.Fatalf("screenshot is %dx%d", b.Dx(), b.Dy())
	}
	r, gr, bl, _ := img.At(b.Dx()/2, 10).RGBA()
	if r>>8 > 0x40 || gr>>8 > 0x40 || bl>>8 > 0x40 {
		t.Fatalf("header bar pixel is %02x%02x%02x, want the dark #1b1f24", r>>8, gr>>8, bl>>8)
	}
	colours := map[uint32]bool{}
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, b, _ := img.At(x, y).RGBA()
			colours[(r>>8)<<16|(g>>8)<<8|b>>8] = true
		}
	}
	if len(colours) < 20 {
		t.Fatalf("screenshot has %d colours: a blank page?", len(colours))
	}
}

func browserText(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(sel))
	if err != nil {
		t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return s
}
