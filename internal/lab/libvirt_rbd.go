package lab

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	lv "github.com/digitalocean/go-libvirt"
)

// lvSecret is a libvirt secret of usage type ceph that holds one Ceph
// user's key for the RBD disks of this backend's domains.
type lvSecret struct {
	uuid   string
	secret lv.Secret
}

// cephSecret returns the UUID of the libvirt secret holding the key of
// r's Ceph user, defining it on first use as Nova's deployment does for
// rbd_secret_uuid: usage type ceph, its value set through the API (never
// on a command line), private (libvirt does not hand the value out) and
// ephemeral (never written to libvirt's disk). The backend removes it in
// StopAll.
func (l *LibvirtCompute) cephSecret(r *RBDDisk) (string, error) {
	if r.CephConf == "" {
		return "", fmt.Errorf("ceph secret: RBD image %s/%s has no ceph.conf (a lab without Options.RBD)", r.Pool, r.Image)
	}
	user := r.User
	if user == "" {
		user = "admin"
	}
	k := r.CephConf + "\x00" + user
	l.secretMu.Lock()
	defer l.secretMu.Unlock()
	if s, ok := l.secrets[k]; ok {
		return s.uuid, nil
	}
	key, err := cephKey(r.CephConf, user)
	if err != nil {
		return "", fmt.Errorf("ceph secret of client.%s: %w", user, err)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("ceph secret of client.%s: %w", user, err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	uuid := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	x := fmt.Sprintf("<secret ephemeral='yes' private='yes'><uuid>%s</uuid><description>%s</description><usage type='ceph'><name>%s</name></usage></secret>",
		uuid, xmlText("raksha lab: key of client."+user+" for "+r.CephConf+"; "+l.opts.Description), xmlText("raksha-lab "+uuid+" client."+user))
	c := l.opts.Conn.Libvirt()
	s, err := c.SecretDefineXML(x, 0)
	if err != nil {
		return "", fmt.Errorf("ceph secret of client.%s: define: %w", user, err)
	}
	if err := c.SecretSetValue(s, key, 0); err != nil {
		_ = c.SecretUndefine(s)
		return "", fmt.Errorf("ceph secret of client.%s: set value: %w", user, err)
	}
	l.secrets[k] = lvSecret{uuid: uuid, secret: s}
	l.log.Info("ceph secret defined", "user", "client."+user, "uuid", uuid)
	return uuid, nil
}

// removeSecrets undefines every secret the backend defined.
func (l *LibvirtCompute) removeSecrets() error {
	l.secretMu.Lock()
	defer l.secretMu.Unlock()
	var errs []error
	for k, s := range l.secrets {
		if err := l.opts.Conn.Libvirt().SecretUndefine(s.secret); err != nil {
			errs = append(errs, fmt.Errorf("undefine ceph secret %s: %w", s.uuid, err))
			continue
		}
		delete(l.secrets, k)
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab libvirt: %v", errs)
	}
	return nil
}

// rbdDiskXML is an RBD volume as Nova's libvirt driver attaches it: a
// network disk of protocol rbd on the cluster's monitors, raw, no host
// cache, discards passed down to the image, cephx with the key in the
// libvirt secret secretUUID, on virtio with its Nova serial.
func rbdDiskXML(d Disk, target, secretUUID string, hosts, ports []string) string {
	user := d.RBD.User
	if user == "" {
		user = "admin"
	}
	var mons strings.Builder
	for i := range hosts {
		fmt.Fprintf(&mons, "<host name='%s' port='%s'/>", xmlText(hosts[i]), xmlText(ports[i]))
	}
	return fmt.Sprintf("<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none' discard='unmap'/>"+
		"<auth username='%s'><secret type='ceph' uuid='%s'/></auth>"+
		"<source protocol='rbd' name='%s'>%s</source><target dev='%s' bus='virtio'/><serial>%s</serial></disk>",
		xmlText(user), xmlText(secretUUID), xmlText(d.RBD.Pool+"/"+d.RBD.Image), mons.String(), xmlText(target), xmlText(d.Serial))
}

// diskXML is a lab disk as libvirt attaches it on target: a qcow2 file on
// virtio with its Nova serial, or an RBD volume as a network disk (its
// Ceph user's secret defined on first use).
func (l *LibvirtCompute) diskXML(d Disk, target string) (string, error) {
	if d.RBD == nil {
		return fileDiskXML(d, target), nil
	}
	uuid, err := l.cephSecret(d.RBD)
	if err != nil {
		return "", err
	}
	hosts, ports, err := monitors(d.RBD.CephConf)
	if err != nil {
		return "", fmt.Errorf("RBD image %s/%s: %w", d.RBD.Pool, d.RBD.Image, err)
	}
	return rbdDiskXML(d, target, uuid, hosts, ports), nil
}

func xmlText(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// cephKey reads the cephx key of client.<user> the way a Ceph client
// finds it through its ceph.conf: the options key, keyfile or keyring of
// the sections [client.<user>], [client] and [global] (the first that
// names one), $cluster, $name and $id expanded; a keyring is read for its
// [client.<user>] section's key. It returns the key's bytes (what a
// libvirt secret of usage ceph holds).
func cephKey(conf, user string) ([]byte, error) {
	f, err := os.Open(conf)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	name := "client." + user
	rank := map[string]int{name: 0, "client": 1, "global": 2}
	type opt struct {
		key, val string
		rank     int
	}
	var best *opt
	section := "global"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.TrimSpace(line[1 : len(line)-1])
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.ReplaceAll(strings.TrimSpace(k), "_", " ")
		r, ok := rank[section]
		if !ok || (k != "key" && k != "keyfile" && k != "keyring") {
			continue
		}
		// Within a section, key wins over keyfile over keyring.
		if best == nil || r < best.rank || (r == best.rank && keyOrder(k) < keyOrder(best.key)) {
			best = &opt{key: k, val: strings.TrimSpace(v), rank: r}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", conf, err)
	}
	if best == nil {
		return nil, fmt.Errorf("%s names no key, keyfile or keyring for %s", conf, name)
	}
	expand := strings.NewReplacer("$cluster", "ceph", "$name", name, "$id", user)
	switch best.key {
	case "key":
		return decodeKey(best.val, conf)
	case "keyfile":
		b, err := os.ReadFile(expand.Replace(best.val))
		if err != nil {
			return nil, err
		}
		return decodeKey(strings.TrimSpace(string(b)), best.val)
	}
	var errs []string
	for _, p := range strings.FieldsFunc(expand.Replace(best.val), func(r rune) bool { return r == ',' || r == ';' || r == ' ' || r == '\t' }) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(conf), p)
		}
		key, err := keyringKey(p, name)
		if err == nil {
			return key, nil
		}
		errs = append(errs, err.Error())
	}
	return nil, fmt.Errorf("no key of %s in the keyrings of %s: %s", name, conf, strings.Join(errs, "; "))
}

func keyOrder(k string) int {
	switch k {
	case "key":
		return 0
	case "keyfile":
		return 1
	}
	return 2
}

// keyringKey reads the key of the entity name from a keyring file.
func keyringKey(path, name string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.TrimSpace(line[1 : len(line)-1])
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && section == name && strings.TrimSpace(k) == "key" {
			return decodeKey(strings.TrimSpace(v), path)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return nil, fmt.Errorf("%s has no key for %s", path, name)
}

func decodeKey(s, where string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("the key in %s: %w", where, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("the key in %s is empty", where)
	}
	return b, nil
}
