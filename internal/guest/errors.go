package guest

import (
	"errors"
	"fmt"
	"strings"
)

// The errors of this package are wrapped with the socket and the operation
// named; test them with errors.Is (and errors.As for *CommandError and
// *HookError).
var (
	// ErrNotAnswering: the socket accepted the connection but the agent did
	// not answer guest-sync-delimited in time (not running yet, hung, or no
	// agent in the guest), or the socket cannot be connected at all.
	ErrNotAnswering = errors.New("guest agent not answering")
	// ErrTimeout: a command got no reply before its deadline. The command may
	// still run in the guest; the client resyncs before the next command.
	ErrTimeout = errors.New("guest agent call timed out")
	// ErrCommandDisabled: the agent refused a command as disabled, by its
	// configuration or because it is frozen (then ErrFrozen matches too).
	ErrCommandDisabled = errors.New("guest agent command disabled")
	// ErrFrozen: the agent refused a command because the guest's filesystems
	// are frozen ("the agent is in frozen state": only ping, info, sync,
	// fsfreeze-status and fsfreeze-thaw work then).
	ErrFrozen = errors.New("guest agent is in frozen state")
	// ErrAlreadyFrozen: a freeze was asked of a guest whose filesystems are
	// already frozen.
	ErrAlreadyFrozen = errors.New("guest filesystems already frozen")
	// ErrLocked: another client (in this or another process) holds the
	// guest's lock file.
	ErrLocked = errors.New("guest is locked by another client")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("guest agent client closed")
	// ErrHookFailed: a pre- or post-freeze hook failed (see *HookError).
	ErrHookFailed = errors.New("guest hook failed")
)

// CommandError is an error reply of the agent to a command.
type CommandError struct {
	// Command is the command that failed, e.g. "guest-exec".
	Command string
	// Class is QEMU's error class, e.g. "CommandNotFound", "GenericError".
	Class string
	// Desc is the agent's description.
	Desc string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.Command, e.Class, Tail([]byte(e.Desc), 512)) // the guest's words: bounded, redacted
}

// Is makes errors.Is(err, ErrCommandDisabled) hold for a command the agent
// says is disabled, errors.Is(err, ErrFrozen) for one refused because the
// guest is frozen, and errors.Is(err, ErrAlreadyFrozen) for a freeze refused
// because the guest is frozen.
func (e *CommandError) Is(target error) bool {
	disabled := strings.Contains(e.Desc, "has been disabled")
	frozen := strings.Contains(e.Desc, "frozen state")
	switch target {
	case ErrCommandDisabled:
		return disabled
	case ErrFrozen:
		return frozen
	case ErrAlreadyFrozen:
		return frozen && strings.HasPrefix(e.Command, "guest-fsfreeze-freeze")
	}
	return false
}

// HookError reports a failed pre- or post-freeze hook.
type HookError struct {
	// Result is the failed hook's result.
	Result HookResult
}

func (e *HookError) Error() string {
	return fmt.Sprintf("%s-hook %s: %v", e.Result.Phase, e.Result.Hook.name(), e.Result.Err)
}

// Unwrap returns ErrHookFailed and the cause.
func (e *HookError) Unwrap() []error { return []error{ErrHookFailed, e.Result.Err} }
