#!/bin/sh
# Makes this container's secrets at start, never at build: sshd's host key, and (when
# DISTOPT_SSH_DIR names a volume shared by the job's containers, mounted at
# /etc/distopt/ssh where sshd and ssh look for it) one user key pair for the
# job, made by whichever container starts first. Then runs the command.
set -eu
mkdir -p /etc/ssh/keys
if [ ! -f /etc/ssh/keys/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/keys/ssh_host_ed25519_key
fi
if [ -n "${DISTOPT_SSH_DIR:-}" ]; then
    mkdir -p "$DISTOPT_SSH_DIR"
    if mkdir "$DISTOPT_SSH_DIR/.lock" 2>/dev/null; then
        if [ ! -f "$DISTOPT_SSH_DIR/id_ed25519" ]; then
            ssh-keygen -q -t ed25519 -N "" -f "$DISTOPT_SSH_DIR/tmp_key"
            cp "$DISTOPT_SSH_DIR/tmp_key.pub" "$DISTOPT_SSH_DIR/authorized_keys"
            mv "$DISTOPT_SSH_DIR/tmp_key.pub" "$DISTOPT_SSH_DIR/id_ed25519.pub"
            mv "$DISTOPT_SSH_DIR/tmp_key" "$DISTOPT_SSH_DIR/id_ed25519"
        fi
    fi
fi
exec "$@"
