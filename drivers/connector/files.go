package connector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"unicode"

	"github.com/flingerlab/flinger/drivers"
)

// DeviceInfoFile is the file, in the working directory, that holds the
// device information the agent posts: {"device_info": {...}}.
const DeviceInfoFile = "device-info.json"

// ErrorFile is the file, in the working directory, where a failing stage
// is recorded under "<stage>_exception_info" for the agent to report.
const ErrorFile = "device-connector-error.json"

// ExceptionInfo is what ErrorFile holds for one failed stage, in
// Testflinger's shape.
type ExceptionInfo struct {
	// Name is the kind of failure in Testflinger's (Python's) words:
	// RecoveryError, ProvisioningError, TimeoutError, ... (see Describe).
	Name string `json:"exception_name"`
	// Message is the failure's message.
	Message string `json:"exception_message"`
	// Cause is the message of the error underneath, or nil when there is none.
	Cause *string `json:"exception_cause"`
}

// Describe turns a stage's error into Testflinger's exception information.
//
// Name: RecoveryError for a *drivers.RecoveryError and ProvisioningError
// for a *drivers.ProvisioningError, as Testflinger's connectors name them;
// else the Python name of a well-known condition (TimeoutError for a
// deadline, CancelledError for a cancellation, NotImplementedError for
// errors.ErrUnsupported, FileNotFoundError, PermissionError,
// JSONDecodeError, ValueError for a device or job file that cannot be
// used); else the name of the first exported Go error type in
// the chain (ExitError, ...); else Exception.
//
// Message and Cause follow Python's `raise Name(message) from cause`: for
// a RecoveryError or ProvisioningError that is not wrapped further the
// message is the text it wraps, else the whole error text; the cause is the
// innermost error of the chain when it differs from that message.
func Describe(err error) ExceptionInfo {
	if err == nil {
		return ExceptionInfo{Name: "Exception"}
	}
	msg, inner := err.Error(), err
	var re *drivers.RecoveryError
	var pe *drivers.ProvisioningError
	name := ""
	switch {
	case errors.As(err, &re):
		name = "RecoveryError"
		if error(re) == err && re.Err != nil {
			msg, inner = re.Err.Error(), re.Err
		}
	case errors.As(err, &pe):
		name = "ProvisioningError"
		if error(pe) == err && pe.Err != nil {
			msg, inner = pe.Err.Error(), pe.Err
		}
	default:
		name = pythonName(err)
		if fe, ok := err.(*fileError); ok {
			inner = fe.err // the file's name is no cause
		}
	}
	info := ExceptionInfo{Name: name, Message: msg}
	if root := rootCause(inner); root != nil {
		if c := root.Error(); c != msg {
			info.Cause = &c
		}
	}
	return info
}

// pythonName names an error that is neither a recovery nor a provisioning
// failure (see Describe).
func pythonName(err error) string {
	var syn *json.SyntaxError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "TimeoutError"
	case errors.Is(err, context.Canceled):
		return "CancelledError"
	case errors.Is(err, errors.ErrUnsupported):
		return "NotImplementedError"
	case errors.Is(err, fs.ErrNotExist):
		return "FileNotFoundError"
	case errors.Is(err, fs.ErrPermission):
		return "PermissionError"
	case errors.As(err, &syn):
		return "JSONDecodeError"
	case errors.As(err, new(*fileError)):
		return "ValueError"
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		t := reflect.TypeOf(e)
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if n := t.Name(); n != "" && unicode.IsUpper([]rune(n)[0]) {
			return n
		}
	}
	return "Exception"
}

// rootCause follows the chain of single wraps to its end; it returns nil
// when err wraps nothing.
func rootCause(err error) error {
	var root error
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		root = e
	}
	return root
}

// writeDeviceInfo writes info to DeviceInfoFile in dir. The file is
// written in place, not replaced, because the agent's scripts may
// bind-mount it into a container.
func writeDeviceInfo(dir string, info map[string]any) error {
	data, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("writing %s: %w", DeviceInfoFile, err)
	}
	if err := os.WriteFile(filepath.Join(dir, DeviceInfoFile), data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", DeviceInfoFile, err)
	}
	return nil
}

// recordError adds "<stage>_exception_info": info to ErrorFile in dir,
// keeping what the file already holds. Testflinger appends one JSON object
// per failure, which leaves a file its agent cannot read once two stages
// failed; this merges them into one object instead, and also reads a file
// made of such appended objects. The file is written in place (tf-test
// bind-mounts it into the test container).
func recordError(dir, stage string, info ExceptionInfo) error {
	path := filepath.Join(dir, ErrorFile)
	all := map[string]any{}
	old, err := os.ReadFile(path)
	switch {
	case err == nil:
		dec := json.NewDecoder(bytes.NewReader(old))
		for {
			var obj map[string]any
			if derr := dec.Decode(&obj); derr != nil {
				if !errors.Is(derr, io.EOF) {
					all = map[string]any{} // unreadable: start afresh
				}
				break
			}
			for k, v := range obj {
				all[k] = v
			}
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("reading %s: %w", ErrorFile, err)
	}
	all[stage+"_exception_info"] = info
	data, err := json.Marshal(all)
	if err != nil {
		return fmt.Errorf("writing %s: %w", ErrorFile, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", ErrorFile, err)
	}
	return nil
}
