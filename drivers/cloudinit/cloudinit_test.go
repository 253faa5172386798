package cloudinit_test

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/flingerlab/flinger/drivers/cloudinit"
)

// userData is the part of a cloud-config the seed sets.
type userData struct {
	Password string `yaml:"password"`
	Chpasswd struct {
		List   []string `yaml:"list"`
		Expire *bool    `yaml:"expire"`
	} `yaml:"chpasswd"`
	SSHPwauth bool `yaml:"ssh_pwauth"`
}

// check checks that doc is a cloud-config that creates the test user.
func check(t *testing.T, what, doc string) {
	t.Helper()
	if !strings.HasPrefix(doc, "#cloud-config\n") {
		t.Errorf("%s does not start with #cloud-config", what)
	}
	var u userData
	if err := yaml.Unmarshal([]byte(doc), &u); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if u.Password != cloudinit.Password || len(u.Chpasswd.List) != 1 || u.Chpasswd.List[0] != cloudinit.User+":"+cloudinit.Password ||
		u.Chpasswd.Expire == nil || *u.Chpasswd.Expire || !u.SSHPwauth {
		t.Errorf("%s does not create %s with a password that does not expire: %+v", what, cloudinit.User, u)
	}
}

func TestSeed(t *testing.T) {
	t.Parallel()
	check(t, "UserData", cloudinit.UserData)
	var meta map[string]string
	if err := yaml.Unmarshal([]byte(cloudinit.MetaData), &meta); err != nil || meta["instance-id"] == "" {
		t.Errorf("MetaData = %q (%v), want an instance-id", meta, err)
	}
	var core20 struct {
		DatasourceList []string `yaml:"datasource_list"`
		Datasource     struct {
			NoCloud struct {
				UserData string `yaml:"user-data"`
				MetaData string `yaml:"meta-data"`
			} `yaml:"NoCloud"`
		} `yaml:"datasource"`
	}
	if err := yaml.Unmarshal([]byte(cloudinit.Core20Config), &core20); err != nil {
		t.Fatalf("Core20Config: %v", err)
	}
	if len(core20.DatasourceList) == 0 || core20.DatasourceList[0] != "NoCloud" {
		t.Errorf("Core20Config datasource_list = %q", core20.DatasourceList)
	}
	check(t, "Core20Config's user-data", core20.Datasource.NoCloud.UserData)
	if core20.Datasource.NoCloud.MetaData != cloudinit.MetaData {
		t.Errorf("Core20Config's meta-data = %q, want %q", core20.Datasource.NoCloud.MetaData, cloudinit.MetaData)
	}
	if cloudinit.Sudoers != "ubuntu ALL=(ALL) NOPASSWD:ALL\n" {
		t.Errorf("Sudoers = %q", cloudinit.Sudoers)
	}
}
