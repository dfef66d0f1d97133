package lab

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// stateFile is the name of the lab's state inside its directory.
const stateFile = "state.json"

// state is everything the lab cloud knows, persisted as one JSON document so
// that it survives a restart of the lab. Tokens are not part of it: clients
// re-authenticate after a restart, as they would after a Keystone key rotation.
type state struct {
	Version    int    `json:"version"`
	NextInst   int    `json:"next_instance"`
	NextHost   int    `json:"next_host"`
	RegionName string `json:"region"`

	Projects      map[string]*project     `json:"projects"`
	Users         map[string]*user        `json:"users"`
	Flavors       map[string]*flavor      `json:"flavors"`
	Images        map[string]*image       `json:"images"`
	Servers       map[string]*server      `json:"servers"`
	ServerGroups  map[string]*serverGroup `json:"server_groups"`
	Volumes       map[string]*volume      `json:"volumes"`
	Snapshots     map[string]*snapshot    `json:"snapshots"`
	VolumeTypes   map[string]*volumeType  `json:"volume_types"`
	Networks      map[string]*network     `json:"networks"`
	Subnets       map[string]*subnet      `json:"subnets"`
	Ports         map[string]*port        `json:"ports"`
	SecGroups     map[string]*secGroup    `json:"security_groups"`
	SecGroupRules map[string]*secRule     `json:"security_group_rules"`
	Stacks        map[string]*stack       `json:"stacks"`
}

type quota struct {
	Instances int `json:"instances"`
	Cores     int `json:"cores"`
	RAM       int `json:"ram"`
	Volumes   int `json:"volumes"`
	Gigabytes int `json:"gigabytes"`
	Snapshots int `json:"snapshots"`
}

type project struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	Quota       quota  `json:"quota"`
}

type user struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Salt           string            `json:"salt"`
	PasswordHash   string            `json:"password_sha256"`
	DefaultProject string            `json:"default_project_id,omitempty"`
	Roles          map[string]string `json:"roles"` // project id → "admin", "member" or "reader"
}

type flavor struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	VCPUs      int               `json:"vcpus"`
	RAM        int               `json:"ram"`
	Disk       int               `json:"disk"`
	Ephemeral  int               `json:"ephemeral"`
	Swap       int               `json:"swap"`
	IsPublic   bool              `json:"is_public"`
	ExtraSpecs map[string]string `json:"extra_specs"`
}

type image struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Owner      string    `json:"owner"`
	Visibility string    `json:"visibility"`
	DiskFormat string    `json:"disk_format"`
	Size       int64     `json:"size"`
	MinDisk    int       `json:"min_disk"`
	MinRAM     int       `json:"min_ram"`
	Created    time.Time `json:"created"`
}

// Server power/vm states as Nova reports them.
const (
	vmActive  = "active"
	vmStopped = "stopped"
	vmResized = "resized"
	vmBuild   = "building"
	vmError   = "error"
	vmDeleted = "deleted"
)

type server struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	ProjectID      string            `json:"project_id"`
	UserID         string            `json:"user_id"`
	FlavorID       string            `json:"flavor_id"`
	ImageID        string            `json:"image_id"`
	KeyName        string            `json:"key_name"`
	AZ             string            `json:"availability_zone"`
	ConfigDrive    bool              `json:"config_drive"`
	UserData       string            `json:"user_data,omitempty"`
	Description    string            `json:"description,omitempty"`
	Metadata       map[string]string `json:"metadata"`
	Tags           []string          `json:"tags"`
	SecurityGroups []string          `json:"security_groups"` // names
	VMState        string            `json:"vm_state"`
	TaskState      string            `json:"task_state,omitempty"`
	Fault          string            `json:"fault,omitempty"`
	Host           string            `json:"host"`
	InstanceName   string            `json:"instance_name"`
	Created        time.Time         `json:"created"`
	Updated        time.Time         `json:"updated"`
	LaunchedAt     time.Time         `json:"launched_at"`
	// BootVolume is the volume at boot_index 0 when the server was booted
	// from a volume (the lab guest itself boots from its kernel and
	// initramfs; the volume is attached as its first disk).
	BootVolume string `json:"boot_volume,omitempty"`
	// OldFlavorID is the flavor before a resize that is not confirmed yet;
	// ResizedFrom the vm state to go back to on confirmation.
	OldFlavorID string `json:"old_flavor_id,omitempty"`
	ResizedFrom string `json:"resized_from,omitempty"`
	// Attachments in attach order.
	Attachments []attachment `json:"attachments"`
	// EphemeralGB are the sizes of the ephemeral disks the block device
	// mapping asked for (source blank, destination local: disk.eph<N> in
	// the instance directory, no volume); none: the flavor's.
	EphemeralGB []int `json:"ephemeral_gb,omitempty"`
}

type attachment struct {
	ID                  string    `json:"id"`
	VolumeID            string    `json:"volume_id"`
	Device              string    `json:"device"`
	Tag                 string    `json:"tag,omitempty"`
	DeleteOnTermination bool      `json:"delete_on_termination"`
	AttachedAt          time.Time `json:"attached_at"`
}

type serverGroup struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Policy    string   `json:"policy"`
	Members   []string `json:"members"`
	ProjectID string   `json:"project_id"`
	UserID    string   `json:"user_id"`
}

type volume struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	ProjectID   string            `json:"project_id"`
	UserID      string            `json:"user_id"`
	Size        int               `json:"size"`
	Status      string            `json:"status"`
	TypeID      string            `json:"volume_type_id"`
	SnapshotID  string            `json:"snapshot_id,omitempty"`
	SourceVolID string            `json:"source_volid,omitempty"`
	ImageID     string            `json:"image_id,omitempty"`
	Bootable    bool              `json:"bootable"`
	Metadata    map[string]string `json:"metadata"`
	AZ          string            `json:"availability_zone"`
	Path        string            `json:"path,omitempty"` // qcow2 file, relative to the lab directory
	// RBD is POOL/IMAGE of a volume kept in RBD (then Path is empty).
	RBD     string    `json:"rbd,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// Attachment, when in-use (the lab has no multi-attach).
	ServerID     string    `json:"server_id,omitempty"`
	AttachmentID string    `json:"attachment_id,omitempty"`
	Device       string    `json:"device,omitempty"`
	AttachedAt   time.Time `json:"attached_at,omitempty"`
}

type snapshot struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	ProjectID   string            `json:"project_id"`
	UserID      string            `json:"user_id"`
	VolumeID    string            `json:"volume_id"`
	Size        int               `json:"size"`
	Status      string            `json:"status"`
	Metadata    map[string]string `json:"metadata"`
	Path        string            `json:"path,omitempty"` // qcow2 file, relative to the lab directory
	// RBD is POOL/IMAGE@SNAP of a snapshot of an RBD volume.
	RBD     string    `json:"rbd,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

type volumeType struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	IsPublic    bool              `json:"is_public"`
	ExtraSpecs  map[string]string `json:"extra_specs"`
}

type network struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	ProjectID string    `json:"project_id"`
	Shared    bool      `json:"shared"`
	External  bool      `json:"external"`
	MTU       int       `json:"mtu"`
	Created   time.Time `json:"created"`
}

type subnet struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	NetworkID string    `json:"network_id"`
	ProjectID string    `json:"project_id"`
	CIDR      string    `json:"cidr"`
	GatewayIP string    `json:"gateway_ip"`
	IPVersion int       `json:"ip_version"`
	NextIP    int       `json:"next_ip"` // last octet handed out
	Created   time.Time `json:"created"`
}

type fixedIP struct {
	SubnetID  string `json:"subnet_id"`
	IPAddress string `json:"ip_address"`
}

type port struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	NetworkID      string    `json:"network_id"`
	ProjectID      string    `json:"project_id"`
	MAC            string    `json:"mac_address"`
	FixedIPs       []fixedIP `json:"fixed_ips"`
	SecurityGroups []string  `json:"security_groups"` // ids
	DeviceID       string    `json:"device_id"`
	DeviceOwner    string    `json:"device_owner"`
	ByNova         bool      `json:"created_by_nova,omitempty"` // deleted with its server
	Created        time.Time `json:"created"`
}

type secGroup struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	ProjectID   string    `json:"project_id"`
	Created     time.Time `json:"created"`
}

type secRule struct {
	ID            string    `json:"id"`
	GroupID       string    `json:"security_group_id"`
	Direction     string    `json:"direction"`
	EtherType     string    `json:"ethertype"`
	Protocol      string    `json:"protocol,omitempty"`
	PortMin       *int      `json:"port_range_min,omitempty"`
	PortMax       *int      `json:"port_range_max,omitempty"`
	RemoteIP      string    `json:"remote_ip_prefix,omitempty"`
	RemoteGroupID string    `json:"remote_group_id,omitempty"`
	ProjectID     string    `json:"project_id"`
	Created       time.Time `json:"created"`
}

type stackResource struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	PhysicalID string `json:"physical_id"`
}

type stack struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	ProjectID string          `json:"project_id"`
	Status    string          `json:"status"`
	ParentID  string          `json:"parent_id,omitempty"`
	Resources []stackResource `json:"resources"`
	Created   time.Time       `json:"created"`
}

func newState() *state {
	return &state{
		Version: 1, NextInst: 1, RegionName: "RegionOne",
		Projects: map[string]*project{}, Users: map[string]*user{}, Flavors: map[string]*flavor{},
		Images: map[string]*image{}, Servers: map[string]*server{}, ServerGroups: map[string]*serverGroup{},
		Volumes: map[string]*volume{}, Snapshots: map[string]*snapshot{}, VolumeTypes: map[string]*volumeType{},
		Networks: map[string]*network{}, Subnets: map[string]*subnet{}, Ports: map[string]*port{},
		SecGroups: map[string]*secGroup{}, SecGroupRules: map[string]*secRule{}, Stacks: map[string]*stack{},
	}
}

// loadState reads dir/state.json; a missing file gives an empty state.
func loadState(dir string) (*state, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return newState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	st := newState()
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("read lab state %s: %w", filepath.Join(dir, stateFile), err)
	}
	return st, nil
}

// save writes the state atomically (temporary file, fsync, rename).
func (st *state) save(dir string) error {
	data, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save lab state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save lab state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return nil
}

// newID returns a random UUID (version 4) as OpenStack services use them.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// newToken returns a random opaque token (Keystone's fernet tokens are opaque
// too).
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return "gAAAAA" + hex.EncodeToString(b[:])
}

func hashPassword(salt, password string) string {
	sum := sha256.Sum256([]byte(salt + "\x00" + password))
	return hex.EncodeToString(sum[:])
}
