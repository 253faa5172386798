package events

import (
	"slices"
	"strings"
)

// The values of provision_data.fail for Flinger's fake connector; they
// are drivers/fake's FailModes.
var fakeFailModes = []string{"provision", "recovery", "firmware_update", "cleanup"}

// attachmentSchema is Testflinger's Attachment (agent required, device
// optional), extended with local: the Testflinger CLI accepts a local path,
// packs the file and rewrites the entry to agent (derived from local when
// absent) before it submits, so a job carrying local names a file still to
// be sent. Either agent or local is required, and one of them must name a
// file (Testflinger takes agent: "", which names nothing).
var attachmentSchema = &schema{
	name: "attachment",
	fields: []field{
		{name: "agent", load: loadString},
		{name: "device", load: loadString},
		{name: "local", load: loadString},
	},
}

func loadAttachment(v any, path string, errs *errList) any {
	before := len(*errs)
	m, ok := v.(map[string]any)
	if !ok {
		errs.add(path, "must be a mapping, got %s", describe(v))
		return nil
	}
	out, _ := attachmentSchema.load(m, path, errs)
	if len(*errs) == before && out["agent"] == nil && out["local"] == nil {
		errs.add(joinPath(path, "agent"), "required (or local, a file to send)")
	} else if len(*errs) == before && asStr(out["agent"]) == "" && asStr(out["local"]) == "" {
		errs.add(joinPath(path, "agent"), "must not be empty")
	}
	return out
}

var attachmentList = listOf(loadAttachment, 0, -1)

// Testflinger's provision_data schemas, in the order its OneOfSchema tries
// them, then Flinger's fake connector. The first that loads is used.
var provisionSchemas = []*schema{
	{name: "cm3", fields: []field{
		{name: "url", required: true, load: loadURL},
	}},
	{name: "maas", fields: []field{
		{name: "distro", load: loadString},
		{name: "kernel", load: loadString},
		{name: "user_data", load: loadString},
		{name: "disks", load: listOf(loadDict, 0, -1)},
		{name: "ephemeral", load: loadBool},
	}},
	{name: "multi", fields: []field{
		{name: "jobs", required: true, load: listOf(loadDict, 1, -1)},
	}},
	{name: "muxpi", fields: []field{
		{name: "url", load: loadURL},
		{name: "use_attachment", load: loadString},
		{name: "attachments", load: attachmentList},
		{name: "create_user", load: loadBool},
		{name: "boot_check_url", load: loadString},
		{name: "media", load: oneOf("sd", "usb")},
	}, check: func(out map[string]any) string {
		_, url := out["url"]
		_, att := out["use_attachment"]
		if !url && !att {
			return "either url or use_attachment is required"
		}
		return ""
	}},
	{name: "noprovision", fields: []field{
		{name: "skip", load: loadBool},
	}},
	{name: "oem_autoinstall", fields: []field{
		{name: "url", load: loadURL},
		{name: "attachments", load: attachmentList},
		{name: "token_file", load: loadString},
		{name: "user_data", load: loadString},
		{name: "redeploy_cfg", load: loadString},
		{name: "authorized_keys", load: loadString},
		{name: "control_host_iso_url", load: loadString},
		{name: "control_host_iso_type", load: loadString},
		{name: "update_user_data", load: loadBool},
	}},
	{name: "oem_script", fields: []field{
		{name: "url", required: true, load: loadURL},
	}},
	{name: "control_host_iot_custom", fields: iotFields(
		field{name: "ubuntu_sso_email", load: loadEmail},
		field{name: "provision_plan", required: true, load: loadDict},
	), check: iotSourceCheck},
	{name: "control_host_iot_preset", fields: iotFields(
		field{name: "preset", required: true, load: loadString},
		field{name: "preset_kwargs", load: loadDict},
	), check: iotSourceCheck},
	{name: "control_host_kvm_autoinstall", fields: []field{
		{name: "provisioning_timeout", load: anyInt},
		{name: "url", required: true, load: loadURL},
		{name: "robot_tasks", required: true, load: listOf(loadString, 0, -1)},
		{name: "robot_retries", load: anyInt},
		{name: "autoinstall_storage_layout", load: loadString},
		{name: "ubuntu_sso_email", load: loadEmail},
		{name: "autoinstall_base_user_data", load: loadString},
		{name: "autoinstall_oem", load: loadBool},
		{name: "cmdline_append", load: loadString},
	}},
	{name: "control_host_kvm_generic", fields: []field{
		{name: "provisioning_timeout", load: anyInt},
		{name: "url", required: true, load: loadURL},
		{name: "robot_tasks", required: true, load: listOf(loadString, 0, -1)},
		{name: "robot_retries", load: anyInt},
		{name: "live_image", required: true, load: loadBool},
		{name: "wait_until_ssh", required: true, load: loadBool},
	}},
	{name: "control_host_kvm_oem_2204", fields: []field{
		{name: "provisioning_timeout", load: anyInt},
		{name: "alloem_url", required: true, load: loadURL},
		{name: "robot_tasks", required: true, load: listOf(loadString, 0, -1)},
		{name: "robot_retries", load: anyInt},
		{name: "url", load: loadURL},
		{name: "oem", load: loadString},
	}},
	{name: "control_host_kvm_preset", fields: []field{
		{name: "provisioning_timeout", load: anyInt},
		{name: "alloem_url", load: loadURL},
		{name: "autoinstall_base_user_data", load: loadString},
		{name: "autoinstall_oem", load: loadBool},
		{name: "autoinstall_storage_layout", load: loadString},
		{name: "cmdline_append", load: loadString},
		{name: "live_image", load: loadBool},
		{name: "oem", load: loadString},
		{name: "preset", required: true, load: loadString},
		{name: "robot_tasks", load: listOf(loadString, 0, -1)},
		{name: "ubuntu_sso_email", load: loadEmail},
		{name: "url", load: loadURL},
		{name: "wait_until_ssh", load: loadBool},
	}},
	// Flinger's extension: the fake connector, which fails on request at
	// one point, waits delay at each phase and prints output_lines lines.
	{name: "flinger_fake", fields: []field{
		{name: "fail", load: oneOf(fakeFailModes...)},
		{name: "delay", load: durationIn(0)},
		{name: "output_lines", load: intIn(0, 1_000_000)}, // drivers/fake.MaxOutputLines
	}},
}

// iotFields returns the control host IoT base fields followed by extra.
func iotFields(extra ...field) []field {
	return append([]field{
		{name: "provisioning_timeout", load: anyInt},
		{name: "url", load: loadURL},
		{name: "urls", load: listOf(loadURL, 1, -1)},
		{name: "attachments", load: listOf(loadAttachment, 0, 1)},
		{name: "agent_ssh_access", load: loadBool},
	}, extra...)
}

// iotSourceCheck requires exactly one boot image source among url, urls and
// attachments, counting only those that are not empty.
func iotSourceCheck(out map[string]any) string {
	var sources []string
	for _, name := range []string{"url", "urls", "attachments"} {
		switch v := out[name].(type) {
		case string:
			if v != "" {
				sources = append(sources, name)
			}
		case []any:
			if len(v) > 0 {
				sources = append(sources, name)
			}
		}
	}
	switch len(sources) {
	case 0:
		return "one of url, urls or a provision attachment is required"
	case 1:
		return ""
	}
	return "give only one boot image source, got " + strings.Join(sources, " and ")
}

// Misspelt provision_data fields are matched against the field names of
// every provision schema, since the intended schema is unknown.
func init() {
	var all []string
	for _, s := range provisionSchemas {
		for _, f := range s.fields {
			if !slices.Contains(all, f.name) {
				all = append(all, f.name)
			}
		}
	}
	slices.Sort(all)
	for _, s := range provisionSchemas {
		s.vocab = all
	}
}

// loadProvision loads provision_data with the first provision schema that
// takes it. When none does, it reports the errors of the closest schema:
// the one with the fewest errors and, among those, the one that knows most
// of the given keys.
func loadProvision(v any, path string, errs *errList) any {
	m, ok := v.(map[string]any)
	if !ok {
		errs.add(path, "must be a mapping, got %s", describe(v))
		return nil
	}
	var best errList
	bestKnown := -1
	for _, s := range provisionSchemas {
		var e errList
		out, known := s.load(m, path, &e)
		if len(e) == 0 {
			return out
		}
		if bestKnown < 0 || len(e) < len(best) || (len(e) == len(best) && known > bestKnown) {
			best, bestKnown = e, known
		}
	}
	*errs = append(*errs, best...)
	return nil
}
