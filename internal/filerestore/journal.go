package filerestore

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Superblock fields and flags about the journal (ext3/4).
const (
	compatHasJournal = 0x4

	sbJournalUUID = 0xD0 // s_journal_uuid[16]
	sbJournalInum = 0xE0 // s_journal_inum
	sbJournalDev  = 0xE4 // s_journal_dev

	jbd2Magic = 0xC03B3998
)

// Journal describes an ext3/4 file system's journal, as its superblock and
// (for an internal journal) the journal's own superblock record it.
type Journal struct {
	// Kind is "internal" (an inode of the file system), "external" (a
	// separate journal device) or "" (no journal: ext2).
	Kind string `json:"kind,omitempty"`
	// Inode is the internal journal's inode number.
	Inode uint32 `json:"inode,omitempty"`
	// Device and UUID name an external journal (the device number it had
	// when the file system was last mounted).
	Device uint32 `json:"device,omitempty"`
	UUID   string `json:"uuid,omitempty"`
	// RecoverFlag is the superblock's needs_recovery feature
	// (EXT4_FEATURE_INCOMPAT_RECOVER): the file system was mounted when
	// the disk was copied and its journal was not replayed since.
	RecoverFlag bool `json:"recover_flag,omitempty"`
	// Start is the internal journal's first log block still to replay (0:
	// the journal holds no transaction), Sequence its first transaction.
	Start    uint32 `json:"start,omitempty"`
	Sequence uint32 `json:"sequence,omitempty"`
	// NeedsRecovery: the journal holds transactions that were not replayed
	// into the file system (RecoverFlag, and the journal is external, not
	// empty, or unreadable). What they hold, the last writes before the
	// disk was copied, is missing or stale in what this package reads.
	NeedsRecovery bool `json:"needs_recovery,omitempty"`
	// Err says why the internal journal's superblock could not be read
	// (NeedsRecovery is then assumed when RecoverFlag is set).
	Err string `json:"error,omitempty"`
}

// Warning is what a reader of this package's view should be told when the
// journal needs recovery ("" when it does not).
func (j Journal) Warning() string {
	if !j.NeedsRecovery {
		return ""
	}
	where := "the " + j.Kind + " journal"
	if j.Kind == "external" {
		// s_journal_dev is in the kernel's new_encode_dev form
		major, minor := (j.Device&0xfff00)>>8, (j.Device&0xff)|(j.Device>>12)&0xfff00
		where = fmt.Sprintf("the external journal (device %d:%d, uuid %s, not part of this disk)", major, minor, j.UUID)
	}
	return fmt.Sprintf("the ext4 file system needs journal recovery (needs_recovery: it was in use when the disk was copied, a crash-consistent backup) "+
		"and %s was NOT replayed: files written shortly before the backup may be missing or stale; an application-consistent backup (guest frozen) avoids this", where)
}

// readJournal reads what the superblock sb and the journal's own superblock
// say of the journal.
func (f *fsys) readJournal(sb []byte, compat, incompat uint32) Journal {
	le := binary.LittleEndian
	j := Journal{RecoverFlag: incompat&incompatRecover != 0}
	inum, dev := le.Uint32(sb[sbJournalInum:]), le.Uint32(sb[sbJournalDev:])
	uuid := sb[sbJournalUUID : sbJournalUUID+16]
	switch {
	case compat&compatHasJournal == 0:
		// ext2, or a journal removed (tune2fs -O ^has_journal)
		j.NeedsRecovery = j.RecoverFlag
		return j
	case inum != 0:
		j.Kind, j.Inode = "internal", inum
	default:
		j.Kind, j.Device = "external", dev
		if strings.Trim(string(uuid), "\x00") != "" {
			j.UUID = fmt.Sprintf("%x-%x-%x-%x-%x", uuid[0:4], uuid[4:6], uuid[6:8], uuid[8:10], uuid[10:16])
		}
	}
	if !j.RecoverFlag {
		return j
	}
	if j.Kind == "external" {
		j.NeedsRecovery = true
		return j
	}
	start, seq, err := f.journalStart(inum)
	if err != nil {
		j.Err, j.NeedsRecovery = err.Error(), true
		return j
	}
	j.Start, j.Sequence, j.NeedsRecovery = start, seq, start != 0
	return j
}

// journalStart reads the internal journal's superblock (its first block):
// s_start, the log block where recovery begins (0 when the journal is
// empty), and s_sequence.
func (f *fsys) journalStart(inum uint32) (start, seq uint32, err error) {
	in, err := f.inode(inum)
	if err != nil {
		return 0, 0, fmt.Errorf("journal: %w", err)
	}
	exts, err := f.extents(in)
	if err != nil {
		return 0, 0, fmt.Errorf("journal: %w", err)
	}
	if len(exts) == 0 || exts[0].lblk != 0 || exts[0].unwritten {
		return 0, 0, fmt.Errorf("journal inode %d: %w: no first block", inum, ErrCorruptFS)
	}
	b := make([]byte, 64)
	if err := f.readAt(b, int64(exts[0].pblk)*f.bs, fmt.Sprintf("journal inode %d superblock", inum)); err != nil {
		return 0, 0, fmt.Errorf("journal: %w", err)
	}
	be := binary.BigEndian
	if be.Uint32(b[0:]) != jbd2Magic {
		return 0, 0, fmt.Errorf("journal inode %d: %w: no journal superblock magic", inum, ErrCorruptFS)
	}
	return be.Uint32(b[0x1C:]), be.Uint32(b[0x18:]), nil
}
