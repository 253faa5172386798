package drivers_test

import (
	"io"
	"strings"
	"testing"

	"github.com/flingerlab/flinger/drivers"
	"github.com/flingerlab/flinger/drivers/image"
	"github.com/flingerlab/flinger/events"
)

func TestImageSource(t *testing.T) {
	t.Parallel()
	const missing = "provision_data.url is required: the URL of the image to write"
	sum := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name string
		pd   events.Data
		want image.Source
		err  string
	}{
		{"https", events.Data{"url": "https://images.example.com/noble.img.xz"}, image.Source{URL: "https://images.example.com/noble.img.xz"}, ""},
		{"with sha256", events.Data{"url": "http://h:8080/x.img", "sha256": sum}, image.Source{URL: "http://h:8080/x.img", SHA256: sum}, ""},
		{"upper-case scheme", events.Data{"url": "HTTP://h/x.img"}, image.Source{URL: "HTTP://h/x.img"}, ""},
		{"no provision_data", nil, image.Source{}, missing},
		{"empty url", events.Data{"url": ""}, image.Source{}, missing},
		{"not a string", events.Data{"url": 5}, image.Source{}, "provision_data.url: must be a string"},
		{"file URL", events.Data{"url": "file:///etc/shadow"}, image.Source{}, "provision_data.url: file:///etc/shadow is not an http or https URL"},
		{"ftp", events.Data{"url": "ftp://h/x.img"}, image.Source{}, "not an http or https URL"},
		{"no host", events.Data{"url": "http:///x.img"}, image.Source{}, "not an http or https URL"},
		{"a path", events.Data{"url": "/srv/x.img"}, image.Source{}, "not an http or https URL"},
		{"control characters", events.Data{"url": "http://h/\nx"}, image.Source{}, "provision_data.url: not a valid URL"},
		{"sha256 not a string", events.Data{"url": "http://h/x.img", "sha256": 1}, image.Source{}, "provision_data.sha256: must be a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := drivers.ImageSource(&events.Job{ProvisionData: tc.pd}, missing)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("ImageSource = %+v, %v; want error %q", got, err, tc.err)
			}
			if got != tc.want {
				t.Errorf("ImageSource = %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := drivers.ImageSource(nil, missing); err == nil || err.Error() != missing {
		t.Errorf("ImageSource(nil) = %v, want %q", err, missing)
	}
}

func TestRunOutput(t *testing.T) {
	t.Parallel()
	if w := (&drivers.Run{}).Output(); w != io.Discard {
		t.Errorf("Output of a run without Out = %v, want io.Discard", w)
	}
	var b strings.Builder
	if w := (&drivers.Run{Out: &b}).Output(); w != &b {
		t.Errorf("Output = %v, want Out", w)
	}
}
