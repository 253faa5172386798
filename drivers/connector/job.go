package connector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/flingerlab/flinger/events"
)

// durationFields are the job's fields that hold seconds; Testflinger's
// schema also takes them as duration strings ("2h30m").
var durationFields = []string{"global_timeout", "output_timeout", "allocation_timeout"}

// LoadJob reads the job at path: testflinger.json as Testflinger's agent
// writes it, the whole job as the server hands it out. Unlike ParseJob it
// is lenient, as Testflinger's connectors are: fields the server adds
// (job_id, created_at, attachments_status, ...) and fields Flinger does not
// know are ignored, and the numbers Flinger holds as integers
// (global_timeout, output_timeout, allocation_timeout, job_priority,
// reserve_data.timeout) are also taken as integral floats, numeric strings
// or duration strings. The file must be a JSON object with a job_queue;
// every error names the file.
func LoadJob(path string) (*events.Job, error) {
	if path == "" {
		return nil, fmt.Errorf("job: %w (give the job file, testflinger.json)", errNoPath)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading job: %w", err)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, &fileError{path: path, err: fmt.Errorf("not a JSON job: %w", err)}
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return nil, badFile(path, "not a job: expected a JSON object, got %s", events.TypeName(doc))
	}
	q, ok := m["job_queue"].(string)
	if !ok || strings.TrimSpace(q) == "" {
		return nil, badFile(path, "not a job: job_queue is missing or not a non-empty string")
	}
	if err := normalizeJob(m); err != nil {
		return nil, &fileError{path: path, err: err}
	}
	clean, err := json.Marshal(m)
	if err != nil {
		return nil, &fileError{path: path, err: err}
	}
	job := &events.Job{}
	if err := json.Unmarshal(clean, job); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, badFile(path, "%s: must be %s, got a JSON %s", te.Field, goKind(te.Type.Kind().String()), te.Value)
		}
		return nil, &fileError{path: path, err: err}
	}
	return job, nil
}

// normalizeJob turns the numbers Flinger holds as integers into integers
// in place; see LoadJob.
func normalizeJob(m map[string]any) error {
	for _, f := range durationFields {
		if err := toSeconds(m, f, f); err != nil {
			return err
		}
	}
	if v, ok := m["job_priority"]; ok && v != nil {
		n, err := toInt(v)
		if err != nil {
			return fmt.Errorf("job_priority: %w", err)
		}
		m["job_priority"] = n
	}
	if rd, ok := m["reserve_data"].(map[string]any); ok {
		if err := toSeconds(rd, "timeout", "reserve_data.timeout"); err != nil {
			return err
		}
	}
	return nil
}

// toSeconds normalises m[key], a number of seconds or a duration string.
func toSeconds(m map[string]any, key, path string) error {
	v, ok := m[key]
	if !ok || v == nil {
		return nil
	}
	if s, ok := v.(string); ok {
		n, err := events.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		m[key] = n
		return nil
	}
	n, err := toInt(v)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	m[key] = n
	return nil
}

// toInt reads an integer given as an integral number or a numeric string.
func toInt(v any) (int, error) {
	if s, ok := v.(string); ok {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return 0, fmt.Errorf("must be an integer, got %q", s)
		}
		return n, nil
	}
	if n, ok := events.AsInt(v); ok {
		return n, nil
	}
	return 0, fmt.Errorf("must be an integer, got %s", events.TypeName(v))
}

// goKind words a Go kind for a message about JSON.
func goKind(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice", "array":
		return "a list"
	case "map", "struct", "ptr", "pointer":
		return "an object"
	}
	if strings.HasPrefix(kind, "int") || strings.HasPrefix(kind, "uint") {
		return "an integer"
	}
	return "a " + kind
}
