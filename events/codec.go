package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"
)

// ContentType is the header value that marks a msgpack payload.
const ContentType = "application/msgpack"

// HeaderContentType is the header carrying a payload's encoding.
const HeaderContentType = "Content-Type"

// ErrDecode is wrapped by every decoding failure, so callers can tell a
// malformed message from a transport error.
var ErrDecode = errors.New("cannot decode message")

// Versioned is a wire record that names its own type and version, such as
// "flinger.event.v1".
type Versioned interface {
	// Kind is the type without its version, such as "flinger.event".
	Kind() string
}

// Encode returns the msgpack encoding of v. The encoding is deterministic:
// map keys are written in order, so equal values encode to equal bytes.
func Encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return buf.Bytes(), nil
}

// Decode reads a msgpack payload into v. When v is Versioned, a payload of
// another kind is refused; a newer version of the same kind is read, its
// unknown fields kept. A payload nested more than a thousand levels deep,
// or with bytes after its value, is refused before it is decoded.
func Decode(data []byte, v any) error {
	if err := checkMsgpack(data, maxMsgpackDepth); err != nil {
		return fmt.Errorf("%w as %s: %v", ErrDecode, typeLabel(v), err)
	}
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w as %s: %v", ErrDecode, typeLabel(v), err)
	}
	if vv, ok := v.(Versioned); ok {
		t := reflect.ValueOf(v).Elem().FieldByName("Type").String()
		if t == "" || !strings.HasPrefix(t, vv.Kind()+".v") {
			return fmt.Errorf("%w as %s: type is %q, want %s.vN", ErrDecode, typeLabel(v), t, vv.Kind())
		}
	}
	return nil
}

func typeLabel(v any) string {
	if vv, ok := v.(Versioned); ok {
		return vv.Kind()
	}
	return strings.TrimPrefix(fmt.Sprintf("%T", v), "*events.")
}

// NewMsg builds a NATS message carrying v in msgpack, with its Content-Type header.
func NewMsg(subject string, v any) (*nats.Msg, error) {
	data, err := Encode(v)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(HeaderContentType, ContentType)
	return m, nil
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// structFields caches, per struct type, its msgpack field names.
type structFields struct {
	list   []fieldInfo
	byName map[string]int
}

type fieldInfo struct {
	name      string
	index     int
	omitEmpty bool
}

var fieldCache sync.Map

func fieldsOf(t reflect.Type) *structFields {
	if sf, ok := fieldCache.Load(t); ok {
		return sf.(*structFields)
	}
	sf := &structFields{byName: map[string]int{}}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("msgpack")
		if tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		sf.byName[name] = len(sf.list)
		sf.list = append(sf.list, fieldInfo{name: name, index: i, omitEmpty: strings.Contains(opts, "omitempty")})
	}
	fieldCache.Store(t, sf)
	return sf
}

// encodeStruct writes the struct v as a msgpack map of its tagged fields
// followed by the unknown fields kept in extra.
func encodeStruct(enc *msgpack.Encoder, v reflect.Value, extra map[string]any) error {
	sf := fieldsOf(v.Type())
	n := len(extra)
	for _, f := range sf.list {
		if !(f.omitEmpty && v.Field(f.index).IsZero()) {
			n++
		}
	}
	if err := enc.EncodeMapLen(n); err != nil {
		return err
	}
	for _, f := range sf.list {
		fv := v.Field(f.index)
		if f.omitEmpty && fv.IsZero() {
			continue
		}
		if err := enc.EncodeString(f.name); err != nil {
			return err
		}
		if err := encodeFieldValue(enc, fv); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := enc.EncodeString(k); err != nil {
			return err
		}
		if err := enc.Encode(extra[k]); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	return nil
}

// encodeFieldValue writes a field's value. The encoder sorts maps keyed by
// string only when the key type is string itself; a map keyed by another
// string type (such as map[Phase]int) is sorted here.
func encodeFieldValue(enc *msgpack.Encoder, v reflect.Value) error {
	if v.Kind() != reflect.Map || v.Type().Key().Kind() != reflect.String || v.Type().Key() == reflect.TypeFor[string]() || v.IsNil() {
		return enc.EncodeValue(v)
	}
	keys := v.MapKeys()
	slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
	if err := enc.EncodeMapLen(len(keys)); err != nil {
		return err
	}
	for _, k := range keys {
		if err := enc.EncodeValue(k); err != nil {
			return err
		}
		if err := enc.EncodeValue(v.MapIndex(k)); err != nil {
			return err
		}
	}
	return nil
}

// decodeStruct reads a msgpack map into the struct v, keeping keys it has
// no field for in *extra.
func decodeStruct(dec *msgpack.Decoder, v reflect.Value, extra *map[string]any) error {
	n, err := dec.DecodeMapLen()
	if err != nil {
		return err
	}
	sf := fieldsOf(v.Type())
	for range max(n, 0) {
		key, err := dec.DecodeString()
		if err != nil {
			return fmt.Errorf("map key: %w", err)
		}
		if i, ok := sf.byName[key]; ok {
			if err := dec.DecodeValue(v.Field(sf.list[i].index)); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			continue
		}
		val, err := dec.DecodeInterface()
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if *extra == nil {
			*extra = map[string]any{}
		}
		(*extra)[key] = val
	}
	return nil
}

// EncodeMsgpack writes the job with its unknown fields.
func (j *Job) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeStruct(enc, reflect.ValueOf(j).Elem(), j.Extra)
}

// DecodeMsgpack reads the job, keeping unknown fields.
func (j *Job) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeStruct(dec, reflect.ValueOf(j).Elem(), &j.Extra)
}

// EncodeMsgpack writes the section with its unknown fields.
func (t *TestData) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeStruct(enc, reflect.ValueOf(t).Elem(), t.Extra)
}

// DecodeMsgpack reads the section, keeping unknown fields.
func (t *TestData) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeStruct(dec, reflect.ValueOf(t).Elem(), &t.Extra)
}

// EncodeMsgpack writes the section with its unknown fields.
func (r *ReserveData) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeStruct(enc, reflect.ValueOf(r).Elem(), r.Extra)
}

// DecodeMsgpack reads the section, keeping unknown fields.
func (r *ReserveData) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeStruct(dec, reflect.ValueOf(r).Elem(), &r.Extra)
}
