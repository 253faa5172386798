package events_test

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/flingerlab/flinger/events"
)

const uuid1 = "3fa85f64-5717-4562-b3fc-2c963f66afa6"

type jobCase struct {
	name   string
	format events.Format // "" detects
	doc    string
	// fields lists the exact error paths a rejected job must report (in
	// sorted order); nil means the job is accepted.
	fields []string
	// msg, when set, must appear in the error text.
	msg string
	// check inspects an accepted job.
	check func(t *testing.T, j *events.Job)
}

func jobCases() []jobCase {
	return []jobCase{
		// Accepted.
		{name: "minimal", doc: "job_queue: q\n", check: func(t *testing.T, j *events.Job) {
			want := &events.Job{JobQueue: "q"}
			if !reflect.DeepEqual(j, want) {
				t.Errorf("job = %+v, want %+v", j, want)
			}
		}},
		{name: "every top-level field", format: events.FormatJSON, doc: `{
			"job_id": "` + uuid1 + `", "parent_job_id": "p", "name": "n", "tags": ["a", "b"],
			"job_queue": "q", "global_timeout": 100, "output_timeout": 50, "allocation_timeout": 60,
			"provision_data": {"url": "http://images.example.com/x.img"},
			"firmware_update_data": {"version": "latest", "ignore_failure": true},
			"test_data": {"test_cmds": "echo hi", "test_username": "u", "test_password": "p"},
			"allocate_data": {"allocate": true},
			"reserve_data": {"ssh_keys": ["lp:alice", "gh:bob"], "timeout": 600},
			"job_status_webhook": "https://hooks.example.com/x", "job_priority": 10,
			"exclude_agents": ["dev1"], "debug": true}`,
			check: func(t *testing.T, j *events.Job) {
				want := &events.Job{
					JobID: uuid1, ParentJobID: "p", Name: "n", Tags: []string{"a", "b"}, JobQueue: "q",
					GlobalTimeout: 100, OutputTimeout: 50, AllocationTimeout: 60,
					ProvisionData:      events.Data{"url": "http://images.example.com/x.img"},
					FirmwareUpdateData: events.Data{"version": "latest", "ignore_failure": true},
					TestData:           &events.TestData{TestCmds: events.ScriptCmds("echo hi"), TestUsername: "u", TestPassword: "p"},
					AllocateData:       events.Data{"allocate": true},
					ReserveData:        &events.ReserveData{SSHKeys: []string{"lp:alice", "gh:bob"}, Timeout: 600},
					JobStatusWebhook:   "https://hooks.example.com/x", JobPriority: 10,
					ExcludeAgents: []string{"dev1"}, Debug: true,
				}
				if !reflect.DeepEqual(j, want) {
					t.Errorf("job =\n%+v\nwant\n%+v", j, want)
				}
			}},
		{name: "control_host_iot preset", doc: `job_queue: q
provision_data:
  preset: rpi-core
  preset_kwargs: {channel: edge}
  url: https://images.example.com/core.img.xz
  agent_ssh_access: false
  provisioning_timeout: "1800"
`, check: func(t *testing.T, j *events.Job) {
			want := events.Data{"preset": "rpi-core", "preset_kwargs": map[string]any{"channel": "edge"},
				"url": "https://images.example.com/core.img.xz", "agent_ssh_access": false, "provisioning_timeout": 1800}
			if !reflect.DeepEqual(j.ProvisionData, want) {
				t.Errorf("provision_data = %#v, want %#v", j.ProvisionData, want)
			}
		}},
		{name: "control_host_iot custom with attachment", doc: `job_queue: q
provision_data:
  provision_plan: {steps: [a]}
  attachments: [{agent: boot.img}]
  ubuntu_sso_email: someone@example.com
`},
		{name: "control_host_kvm generic", doc: `job_queue: q
provision_data:
  url: http://10.0.0.1:8080/live.iso
  robot_tasks: [boot.robot, login.robot]
  live_image: "yes"
  wait_until_ssh: false
`, check: func(t *testing.T, j *events.Job) {
			if j.ProvisionData["live_image"] != true {
				t.Errorf("live_image = %#v, want true (marshmallow Boolean)", j.ProvisionData["live_image"])
			}
		}},
		{name: "control_host_kvm autoinstall", doc: `job_queue: q
provision_data:
  url: https://releases.example.com/noble.iso
  robot_tasks: []
  robot_retries: 3
  ubuntu_sso_email: a.b+c@mail.example.org
  autoinstall_oem: true
`},
		{name: "oem_autoinstall", doc: `job_queue: q
provision_data:
  url: https://oem.example.com/image.iso
  token_file: token.txt
  attachments:
    - agent: user-data
    - local: ./redeploy.cfg
  update_user_data: true
`, check: func(t *testing.T, j *events.Job) {
			if got := j.ProvisionData["token_file"]; got != "token.txt" {
				t.Errorf("token_file = %v", got)
			}
		}},
		{name: "cm3", doc: "job_queue: q\nprovision_data: {url: 'ftp://files.example.com/pi.img'}\n"},
		{name: "maas", doc: "job_queue: q\nprovision_data: {distro: noble, kernel: hwe, disks: [{id: 1}], ephemeral: 'true'}\n",
			check: func(t *testing.T, j *events.Job) {
				if j.ProvisionData["ephemeral"] != true {
					t.Errorf("ephemeral = %#v, want true", j.ProvisionData["ephemeral"])
				}
			}},
		{name: "multi", doc: "job_queue: q\nprovision_data:\n  jobs:\n    - {job_queue: a}\n    - {job_queue: b}\n"},
		{name: "noprovision", doc: "job_queue: q\nprovision_data: {skip: true}\n",
			check: func(t *testing.T, j *events.Job) {
				if r := j.SkipReason(events.PhaseProvision); r == "" {
					t.Error("provision not skipped")
				}
			}},
		{name: "muxpi use_attachment", doc: "job_queue: q\nprovision_data: {use_attachment: img.xz, attachments: [{agent: img.xz}], media: usb, create_user: 0}\n",
			check: func(t *testing.T, j *events.Job) {
				if j.ProvisionData["create_user"] != false {
					t.Errorf("create_user = %#v, want false", j.ProvisionData["create_user"])
				}
			}},
		{name: "fake connector", doc: "job_queue: q\nprovision_data: {fail: recovery, delay: 1m30s, output_lines: 10}\n",
			check: func(t *testing.T, j *events.Job) {
				want := events.Data{"fail": "recovery", "delay": 90, "output_lines": 10}
				if !reflect.DeepEqual(j.ProvisionData, want) {
					t.Errorf("provision_data = %#v, want %#v", j.ProvisionData, want)
				}
			}},
		{name: "provision_data null", doc: "job_queue: q\nprovision_data: null\n",
			check: func(t *testing.T, j *events.Job) {
				if j.ProvisionData != nil {
					t.Errorf("provision_data = %#v, want nil", j.ProvisionData)
				}
			}},
		{name: "test_cmds as list", doc: "job_queue: q\ntest_data:\n  test_cmds:\n    - echo one\n    - echo two\n",
			check: func(t *testing.T, j *events.Job) {
				if want := events.ListCmds("echo one", "echo two"); !reflect.DeepEqual(j.TestData.TestCmds, want) {
					t.Errorf("test_cmds = %+v, want %+v", j.TestData.TestCmds, want)
				}
			}},
		{name: "test_cmds as script", doc: "job_queue: q\ntest_data:\n  test_cmds: |\n    echo one\n    echo two\n",
			check: func(t *testing.T, j *events.Job) {
				if want := events.ScriptCmds("echo one\necho two\n"); !reflect.DeepEqual(j.TestData.TestCmds, want) {
					t.Errorf("test_cmds = %+v, want %+v", j.TestData.TestCmds, want)
				}
			}},
		{name: "attachments and secrets", doc: `job_queue: q
test_data:
  attachments:
    - {agent: a.txt, device: /tmp/a.txt}
    - {local: ../b.txt}
  secrets: {API_TOKEN: team/ci/token, _x: a-b_c}
`, check: func(t *testing.T, j *events.Job) {
			wantAtt := []events.Attachment{{Agent: "a.txt", Device: "/tmp/a.txt"}, {Local: "../b.txt"}}
			if !reflect.DeepEqual(j.TestData.Attachments, wantAtt) {
				t.Errorf("attachments = %+v", j.TestData.Attachments)
			}
			wantSec := map[string]string{"API_TOKEN": "team/ci/token", "_x": "a-b_c"}
			if !reflect.DeepEqual(j.TestData.Secrets, wantSec) {
				t.Errorf("secrets = %+v", j.TestData.Secrets)
			}
		}},
		{name: "reserve timeout duration string", doc: "job_queue: q\nreserve_data: {ssh_keys: ['lp:bob'], timeout: 2h30m}\n",
			check: func(t *testing.T, j *events.Job) {
				if j.ReserveData.Timeout != 9000 {
					t.Errorf("timeout = %d, want 9000", j.ReserveData.Timeout)
				}
			}},
		{name: "reserve timeout null", doc: "job_queue: q\nreserve_data: {ssh_keys: ['gh:bob'], timeout: null}\n",
			check: func(t *testing.T, j *events.Job) {
				if j.ReserveData == nil || j.ReserveData.Timeout != 0 {
					t.Errorf("reserve_data = %+v, want timeout 0 (default)", j.ReserveData)
				}
			}},
		{name: "marshmallow integer and boolean strings", doc: "job_queue: q\nglobal_timeout: ' 3600 '\njob_priority: '1_0'\ndebug: 'on'\n",
			check: func(t *testing.T, j *events.Job) {
				if j.GlobalTimeout != 3600 || j.JobPriority != 10 || !j.Debug {
					t.Errorf("got timeout %d priority %d debug %v", j.GlobalTimeout, j.JobPriority, j.Debug)
				}
			}},
		{name: "JSON integral floats become ints", format: events.FormatJSON,
			doc: `{"job_queue": "q", "output_timeout": 3600.0, "allocate_data": {"n": 2.0, "f": 2.5, "big": 12345678901234567890}}`,
			check: func(t *testing.T, j *events.Job) {
				if j.OutputTimeout != 3600 {
					t.Errorf("output_timeout = %d", j.OutputTimeout)
				}
				want := events.Data{"n": 2, "f": 2.5, "big": 12345678901234567890.0}
				if !reflect.DeepEqual(j.AllocateData, want) {
					t.Errorf("allocate_data = %#v, want %#v", j.AllocateData, want)
				}
			}},
		{name: "empty job_id means none", doc: "job_queue: q\njob_id: ''\n"},
		{name: "unquoted date stays a string", doc: "job_queue: q\nname: 2024-01-02\nallocate_data: {when: 2024-01-02T10:00:00Z}\n",
			check: func(t *testing.T, j *events.Job) {
				if j.Name != "2024-01-02" || j.AllocateData["when"] != "2024-01-02T10:00:00Z" {
					t.Errorf("name = %q, when = %#v", j.Name, j.AllocateData["when"])
				}
			}},
		{name: "empty webhook means none", doc: "job_queue: q\njob_status_webhook: ''\n"},
		{name: "YAML anchors and merge keys", doc: "job_queue: q\nallocate_data: &a {x: 1}\nfirmware_update_data:\n  <<: *a\n  version: v2\n",
			check: func(t *testing.T, j *events.Job) {
				if want := (events.Data{"x": 1, "version": "v2"}); !reflect.DeepEqual(j.FirmwareUpdateData, want) {
					t.Errorf("firmware_update_data = %#v", j.FirmwareUpdateData)
				}
			}},

		// Rejected.
		{name: "no job_queue", doc: "name: x\n", fields: []string{"job_queue"}, msg: "job_queue: required"},
		{name: "empty job_queue", doc: "job_queue: ''\n", fields: []string{"job_queue"}, msg: "must not be empty"},
		{name: "job_queue not a string", doc: "job_queue: 12\n", fields: []string{"job_queue"}, msg: "must be a string, got 12"},
		{name: "null job_queue", doc: "job_queue:\n", fields: []string{"job_queue"}, msg: "must not be null"},
		{name: "unknown top-level field", doc: "job_queue: q\njob_queu: q\n", fields: []string{"job_queu"},
			msg: "job_queu: unknown field (did you mean job_queue?)"},
		{name: "unknown field without suggestion", doc: "job_queue: q\nwhatever: 1\n", fields: []string{"whatever"},
			msg: "whatever: unknown field"},
		{name: "unknown field with an odd name", doc: "job_queue: q\n'job queue': 1\n", fields: []string{`["job queue"]`}},
		{name: "ssh key with a space", doc: "job_queue: q\nreserve_data: {ssh_keys: ['lp: bob']}\n",
			fields: []string{"reserve_data.ssh_keys[0]"}, msg: `must match lp:<user> or gh:<user>, got "lp: bob"`},
		{name: "ssh key from an unknown server", doc: "job_queue: q\nreserve_data: {ssh_keys: ['gh:ok', 'bb:bob']}\n",
			fields: []string{"reserve_data.ssh_keys[1]"}},
		{name: "bad UUID job_id", doc: "job_queue: q\njob_id: not-a-uuid\n", fields: []string{"job_id"}, msg: "must be a UUID"},
		{name: "malformed YAML", doc: "job_queue: q\nname: x\ntags:\n  - a\n b: c\n", fields: []string{"(job)"}, msg: "(job): invalid YAML: line 5: did not find expected key"},
		{name: "YAML parser error line counts from 1", doc: "job_queue: q\nname: x\n- a\n", fields: []string{"(job)"}, msg: "line 3: did not find expected key"},
		{name: "YAML parser error on line 1", doc: "- a\nb: c\n", fields: []string{"(job)"}, msg: "line 2: did not find expected '-' indicator"},
		{name: "YAML duplicate key", doc: "job_queue: q\nname: a\nname: b\n", fields: []string{"(job)"}, msg: "line 3"},
		{name: "two YAML documents", doc: "job_queue: q\n---\njob_queue: r\n", fields: []string{"(job)"}, msg: "more than one document"},
		{name: "top level is a list", doc: "- job_queue: q\n", fields: []string{"(job)"}, msg: "must be a mapping"},
		{name: "top level is a scalar", format: events.FormatJSON, doc: `"q"`, fields: []string{"(job)"}, msg: "must be a mapping"},
		{name: "empty document", doc: "", fields: []string{"(job)"}, msg: "empty job"},
		{name: "non-string top-level key", doc: "job_queue: q\n1: x\n", fields: []string{"(job)"}, msg: "keys must be strings"},
		{name: "malformed JSON", format: events.FormatJSON, doc: "{\"job_queue\": \"q\",\n \"x\": }", fields: []string{"(job)"}, msg: "line 2"},
		{name: "JSON trailing data", format: events.FormatJSON, doc: `{"job_queue": "q"} {}`, fields: []string{"(job)"}, msg: "after the top-level value"},
		{name: "garbage msgpack", format: events.FormatMsgpack, doc: "\xde\x00\x05\xa1", fields: []string{"(job)"}, msg: "invalid msgpack"},
		{name: "zero global_timeout", doc: "job_queue: q\nglobal_timeout: 0\n", fields: []string{"global_timeout"}, msg: "greater than 0"},
		{name: "timeout not a number", doc: "job_queue: q\noutput_timeout: soon\n", fields: []string{"output_timeout"}, msg: "must be an integer"},
		{name: "fractional timeout", doc: "job_queue: q\nallocation_timeout: 1.5\n", fields: []string{"allocation_timeout"}, msg: "got 1.5"},
		{name: "boolean timeout", doc: "job_queue: q\nglobal_timeout: true\n", fields: []string{"global_timeout"}},
		{name: "huge timeout", doc: "job_queue: q\nglobal_timeout: 99999999999\n", fields: []string{"global_timeout"}, msg: "at most"},
		{name: "bad debug", doc: "job_queue: q\ndebug: maybe\n", fields: []string{"debug"}, msg: "must be true or false"},
		{name: "debug 2", doc: "job_queue: q\ndebug: 2\n", fields: []string{"debug"}},
		{name: "negative priority", doc: "job_queue: q\njob_priority: -1\n", fields: []string{"job_priority"}},
		{name: "priority too high", doc: "job_queue: q\njob_priority: 100001\n", fields: []string{"job_priority"}},
		{name: "webhook not http", doc: "job_queue: q\njob_status_webhook: ftp://hooks.example.com\n", fields: []string{"job_status_webhook"}},
		{name: "tags items", doc: "job_queue: q\ntags: [a, 1, {b: c}]\n", fields: []string{"tags[1]", "tags[2]"}},
		{name: "exclude_agents not a list", doc: "job_queue: q\nexclude_agents: dev1\n", fields: []string{"exclude_agents"}, msg: "must be a list"},
		{name: "test_data unknown key", doc: "job_queue: q\ntest_data: {test_cmd: x}\n", fields: []string{"test_data.test_cmd"},
			msg: "did you mean test_cmds?"},
		{name: "test_data null", doc: "job_queue: q\ntest_data:\n", fields: []string{"test_data"}, msg: "must not be null"},
		{name: "test_cmds item not a string", doc: "job_queue: q\ntest_data: {test_cmds: [ok, 3]}\n", fields: []string{"test_data.test_cmds[1]"}},
		{name: "test_cmds a mapping", doc: "job_queue: q\ntest_data: {test_cmds: {a: b}}\n", fields: []string{"test_data.test_cmds"}},
		{name: "attachment without agent", doc: "job_queue: q\ntest_data:\n  attachments: [{agent: a}, {agent: b}, {device: /c}]\n",
			fields: []string{"test_data.attachments[2].agent"}, msg: "required"},
		{name: "attachment unknown key", doc: "job_queue: q\ntest_data:\n  attachments: [{agent: a, devcie: b}]\n",
			fields: []string{"test_data.attachments[0].devcie"}, msg: "did you mean device?"},
		{name: "errors sorted naturally", doc: "job_queue: q\ntest_data:\n  attachments: [{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}]\n",
			fields: []string{
				"test_data.attachments[0].agent", "test_data.attachments[1].agent", "test_data.attachments[2].agent",
				"test_data.attachments[3].agent", "test_data.attachments[4].agent", "test_data.attachments[5].agent",
				"test_data.attachments[6].agent", "test_data.attachments[7].agent", "test_data.attachments[8].agent",
				"test_data.attachments[9].agent", "test_data.attachments[10].agent",
			}},
		{name: "bad secret name and path", doc: "job_queue: q\ntest_data:\n  secrets: {1BAD: ok, GOOD: 'not ok', 'a b': x}\n",
			fields: []string{"test_data.secrets.1BAD", "test_data.secrets.GOOD", `test_data.secrets["a b"]`}},
		{name: "reserve timeout not a duration", doc: "job_queue: q\nreserve_data: {timeout: 1y}\n", fields: []string{"reserve_data.timeout"}, msg: "invalid duration"},
		{name: "reserve timeout negative", doc: "job_queue: q\nreserve_data: {timeout: -5}\n", fields: []string{"reserve_data.timeout"}},
		{name: "reserve timeout zero", doc: "job_queue: q\nreserve_data: {timeout: 0s}\n", fields: []string{"reserve_data.timeout"}},
		{name: "reserve timeout a float", doc: "job_queue: q\nreserve_data: {timeout: 1.5}\n", fields: []string{"reserve_data.timeout"}},
		{name: "reserve_data unknown key", doc: "job_queue: q\nreserve_data: {timeot: 10}\n", fields: []string{"reserve_data.timeot"},
			msg: "did you mean timeout?"},
		{name: "provision URL invalid", doc: "job_queue: q\nprovision_data: {url: 'http://no_tld/x'}\n",
			fields: []string{"provision_data.url"}, msg: "provision_data.url: not a valid URL"},
		{name: "provision URL with a bad scheme", doc: "job_queue: q\nprovision_data: {url: 'file:///tmp/x.img'}\n",
			fields: []string{"provision_data.url"}},
		{name: "provision misspelt fake field", doc: "job_queue: q\nprovision_data: {fial: provision}\n",
			fields: []string{"provision_data.fial"}, msg: "provision_data.fial: unknown field (did you mean fail?)"},
		{name: "provision fields of two device types", doc: "job_queue: q\nprovision_data: {url: 'http://img.example.com/a', delay: 2, output_lines: 3}\n",
			fields: []string{"provision_data.url"}, msg: "url is another device type's"},
		{name: "provision not a mapping", doc: "job_queue: q\nprovision_data: [url]\n", fields: []string{"provision_data"}, msg: "must be a mapping"},
		{name: "muxpi bad media", doc: "job_queue: q\nprovision_data: {url: 'http://img.example.com/a', media: nvme}\n",
			fields: []string{"provision_data.media"}, msg: "must be one of sd, usb"},
		{name: "muxpi without url or use_attachment", doc: "job_queue: q\nprovision_data: {media: sd, create_user: true}\n",
			fields: []string{"provision_data"}, msg: "either url or use_attachment is required"},
		{name: "control_host_iot two sources", doc: "job_queue: q\nprovision_data:\n  preset: p\n  url: http://a.example.com/x\n  urls: ['http://b.example.com/y']\n",
			fields: []string{"provision_data"}, msg: "give only one boot image source, got url and urls"},
		{name: "control_host_iot no source", doc: "job_queue: q\nprovision_data: {preset: p, agent_ssh_access: true}\n",
			fields: []string{"provision_data"}, msg: "one of url, urls or a provision attachment is required"},
		{name: "control_host_iot two attachments", doc: "job_queue: q\nprovision_data: {preset: p, attachments: [{agent: a}, {agent: b}]}\n",
			fields: []string{"provision_data.attachments"}, msg: "at most 1 item"},
		{name: "control_host_iot bad email", doc: "job_queue: q\nprovision_data: {provision_plan: {}, url: 'http://a.example.com/x', ubuntu_sso_email: nobody}\n",
			fields: []string{"provision_data.ubuntu_sso_email"}, msg: "not a valid email"},
		{name: "control_host_kvm generic missing live_image", doc: "job_queue: q\nprovision_data: {url: 'http://a.example.com/x', robot_tasks: [a], wait_until_ssh: true}\n",
			fields: []string{"provision_data.live_image"}, msg: "required"},
		{name: "multi with no jobs", doc: "job_queue: q\nprovision_data: {jobs: []}\n", fields: []string{"provision_data.jobs"}, msg: "must not be empty"},
		{name: "fake unknown failure", doc: "job_queue: q\nprovision_data: {fail: boom}\n", fields: []string{"provision_data.fail"}},
		{name: "fake negative output_lines", doc: "job_queue: q\nprovision_data: {output_lines: -1, delay: 1}\n", fields: []string{"provision_data.output_lines"}},
		{name: "firmware ignore_failure not boolean", doc: "job_queue: q\nfirmware_update_data: {version: 2, ignore_failure: 'yes'}\n",
			fields: []string{"firmware_update_data.ignore_failure", "firmware_update_data.version"}},
		{name: "allocate_data not a mapping", doc: "job_queue: q\nallocate_data: true\n", fields: []string{"allocate_data"}},
		{name: "NaN in free-form data", doc: "job_queue: q\nallocate_data: {x: .nan}\n", fields: []string{"allocate_data.x"}, msg: "finite"},
		{name: "several errors at once", doc: "job_id: x\nglobal_timeout: -1\ndebug: nah\n",
			fields: []string{"debug", "global_timeout", "job_id", "job_queue"}},
	}
}

func TestParseJob(t *testing.T) {
	cases := jobCases()
	if len(cases) < 40 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j, err := events.ParseJob([]byte(tc.doc), tc.format, 0)
			if tc.fields == nil {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if tc.check != nil {
					tc.check(t, j)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v, want errors on %v", j, tc.fields)
			}
			if j != nil {
				t.Errorf("returned a job with an error")
			}
			var verr *events.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error %T %v is not a *ValidationError", err, err)
			}
			var got []string
			for _, f := range verr.Fields {
				got = append(got, f.Field)
			}
			if !slices.Equal(got, tc.fields) {
				t.Errorf("error fields = %q, want %q\n(%v)", got, tc.fields, err)
			}
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), "invalid job: ") {
				t.Errorf("error %q does not start with \"invalid job: \"", err)
			}
		})
	}
}

func TestParseJobOversize(t *testing.T) {
	doc := []byte("job_queue: q\nname: " + strings.Repeat("x", 100) + "\n")
	_, err := events.ParseJob(doc, events.FormatYAML, 64)
	var verr *events.ValidationError
	if !errors.As(err, &verr) || len(verr.Fields) != 1 || verr.Fields[0].Field != "(job)" {
		t.Fatalf("err = %v, want one (job) error", err)
	}
	for _, want := range []string{"120 bytes", "64 bytes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := events.ParseJob(doc, events.FormatYAML, len(doc)); err != nil {
		t.Errorf("a job of exactly the limit is rejected: %v", err)
	}
	big := []byte("job_queue: q\nname: " + strings.Repeat("x", events.DefaultMaxJobBytes) + "\n")
	if _, err := events.ParseJob(big, events.FormatYAML, 0); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("maxBytes 0 does not apply DefaultMaxJobBytes: %v", err)
	}
}

func TestParseJobMsgpack(t *testing.T) {
	doc := map[string]any{
		"job_queue":    "q",
		"reserve_data": map[string]any{"ssh_keys": []string{"lp:bob"}, "timeout": "1h"},
		"test_data":    map[string]any{"test_cmds": []any{"a", "b"}},
		"job_priority": uint8(5),
	}
	b, err := msgpack.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	j, err := events.ParseJob(b, "", 0)
	if err != nil {
		t.Fatalf("ParseJob: %v", err)
	}
	if j.ReserveData.Timeout != 3600 || j.JobPriority != 5 || !j.TestData.TestCmds.IsList {
		t.Errorf("job = %+v", j)
	}
	bin, _ := msgpack.Marshal(map[string]any{"job_queue": []byte("q")})
	if _, err := events.ParseJob(bin, events.FormatMsgpack, 0); err == nil || !strings.Contains(err.Error(), "job_queue") {
		t.Errorf("binary job_queue: err = %v", err)
	}
	trailing := append(b, 0xc0)
	if _, err := events.ParseJob(trailing, events.FormatMsgpack, 0); err == nil {
		t.Error("trailing bytes accepted")
	}
}

func TestParseJobUnknownFormat(t *testing.T) {
	_, err := events.ParseJob([]byte("job_queue: q"), "xml", 0)
	var verr *events.ValidationError
	if !errors.As(err, &verr) || !strings.Contains(err.Error(), `"xml"`) {
		t.Errorf("err = %v", err)
	}
}

func TestValidateJob(t *testing.T) {
	doc := map[string]any{
		"job_queue":    "q",
		"tags":         []string{"a"},
		"reserve_data": map[string]any{"ssh_keys": []any{"lp:ok", "xx"}, "timeout": int64(60)},
		"provision_data": events.Data{
			"url": "https://images.example.com/a.img",
		},
	}
	errs := events.ValidateJob(doc)
	want := []events.FieldError{{Field: "reserve_data.ssh_keys[1]", Message: `must match lp:<user> or gh:<user>, got "xx"`}}
	if !reflect.DeepEqual(errs, want) {
		t.Errorf("errors = %+v, want %+v", errs, want)
	}
	if errs := events.ValidateJob(map[string]any{"job_queue": "q"}); len(errs) != 0 {
		t.Errorf("valid job: %+v", errs)
	}
	if errs := events.ValidateJob(nil); len(errs) != 1 || errs[0].Field != "job_queue" {
		t.Errorf("nil job: %+v", errs)
	}
}

func TestValidationErrorMessage(t *testing.T) {
	e := &events.ValidationError{Fields: []events.FieldError{
		{Field: "job_queue", Message: "required"},
		{Field: "reserve_data.ssh_keys[0]", Message: `must match lp:<user> or gh:<user>, got "lp: bob"`},
	}}
	want := `invalid job: job_queue: required; reserve_data.ssh_keys[0]: must match lp:<user> or gh:<user>, got "lp: bob"`
	if e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
	if (&events.ValidationError{}).Error() != "invalid job" {
		t.Errorf("empty: %q", (&events.ValidationError{}).Error())
	}
}

func TestDetectFormat(t *testing.T) {
	mp, _ := msgpack.Marshal(map[string]any{"job_queue": "q"})
	for _, tc := range []struct {
		name string
		data string
		want events.Format
	}{
		{"job.json", "job_queue: q", events.FormatJSON},
		{"job.YAML", `{"job_queue": "q"}`, events.FormatYAML},
		{"job.yml", "", events.FormatYAML},
		{"job.msgpack", "", events.FormatMsgpack},
		{"", "  \n\t{\"job_queue\": \"q\"}", events.FormatJSON},
		{"", "\xef\xbb\xbf{}", events.FormatJSON},
		{"job.txt", "job_queue: q\n", events.FormatYAML},
		{"", "{job_queue: q}", events.FormatJSON},
		{"", "", events.FormatYAML},
		{"", "- a", events.FormatYAML},
		{"", string(mp), events.FormatMsgpack},
	} {
		if got := events.DetectFormat(tc.name, []byte(tc.data)); got != tc.want {
			t.Errorf("DetectFormat(%q, %q) = %q, want %q", tc.name, tc.data, got, tc.want)
		}
	}
}

func TestProvisionURLAndEmail(t *testing.T) {
	parse := func(pd string) error {
		_, err := events.ParseJob([]byte("job_queue: q\nprovision_data: "+pd+"\n"), events.FormatYAML, 0)
		return err
	}
	for _, u := range []string{
		"https://images.example.com/x.img", "http://localhost:8080/a", "ftp://user:pw@files.example.org/x",
		"ftps://files.example.org", "http://192.168.1.10/img", "http://[fe80::1]/x", "https://example.com?x=1",
		"HTTPS://EXAMPLE.COM/X", "http://example.com./trailing-dot",
	} {
		if err := parse("{url: '" + u + "'}"); err != nil {
			t.Errorf("url %q refused: %v", u, err)
		}
	}
	for _, u := range []string{
		"http://fileserver/x", "file:///tmp/x", "images.example.com/x", "http://a.example.com/has space",
		"gopher://a.example.com/", "http://-bad-.example.com/", "http://", "", "http://a.b/x",
	} {
		err := parse("{url: '" + u + "'}")
		var verr *events.ValidationError
		if !errors.As(err, &verr) || len(verr.Fields) != 1 || verr.Fields[0].Field != "provision_data.url" {
			t.Errorf("url %q: err = %v, want one error on provision_data.url", u, err)
		}
	}
	for _, e := range []string{"a@b.co", "x@localhost", "first.last+tag@sub.example.org", "a@[10.0.0.1]", "ünï@example.com"} {
		if err := parse("{preset: p, url: 'http://a.example.com/x', ubuntu_sso_email: '" + e + "'}"); err != nil {
			t.Errorf("email %q refused: %v", e, err)
		}
	}
	for _, e := range []string{"a@b", "a@@b.com", "@b.com", "a b@c.com", "a.@b.com", "a@b.com.", "plain"} {
		err := parse("{preset: p, url: 'http://a.example.com/x', ubuntu_sso_email: '" + e + "'}")
		var verr *events.ValidationError
		if !errors.As(err, &verr) || len(verr.Fields) != 1 || verr.Fields[0].Field != "provision_data.ubuntu_sso_email" {
			t.Errorf("email %q: err = %v, want one error on provision_data.ubuntu_sso_email", e, err)
		}
	}
}

func TestParseJobMsgpackRefusals(t *testing.T) {
	ts, _ := msgpack.Marshal(map[string]any{"job_queue": "q", "allocate_data": map[string]any{"at": time.Unix(0, 0)}})
	deep := append([]byte{0x82, 0xa9, 'j', 'o', 'b', '_', 'q', 'u', 'e', 'u', 'e', 0xa1, 'q',
		0xad, 'a', 'l', 'l', 'o', 'c', 'a', 't', 'e', '_', 'd', 'a', 't', 'a'}, bytes.Repeat([]byte{0x91}, 5000)...)
	deep = append(deep, 0xc0)
	for name, tc := range map[string]struct {
		data  []byte
		field string
		msg   string
	}{
		"timestamp":      {ts, "allocate_data.at", "timestamp"},
		"deep nesting":   {deep, "(job)", "levels deep"},
		"non-string key": {[]byte{0x81, 0x01, 0x02}, "(job)", "invalid msgpack"},
	} {
		_, err := events.ParseJob(tc.data, events.FormatMsgpack, 0)
		var verr *events.ValidationError
		if !errors.As(err, &verr) || len(verr.Fields) != 1 || verr.Fields[0].Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: err = %v, want an error on %s mentioning %q", name, err, tc.field, tc.msg)
		}
	}
}
