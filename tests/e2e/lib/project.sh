# shellcheck shell=bash
# Build the project's release binaries and install them into the rootfs the
# way a distribution package would. Sourced after common.sh.

E2E_PREPARE_PATH=/usr/libexec/microvm-workspaces-prepare

e2e_build_project() {
    command -v cargo >/dev/null || e2e_die "cargo not found (install Rust: apt-get install cargo, or rustup)"
    local t0; t0=$(e2e_now)
    e2e_log "building the project (cargo build --release, target dir $E2E_TARGET)"
    if ! (cd "$E2E_REPO" && MICROVM_WORKSPACES_PREPARE=$E2E_PREPARE_PATH CARGO_TARGET_DIR=$E2E_TARGET \
            cargo build --release --bins) > "$E2E_RUN/cargo-build.log" 2>&1; then
        tail -n 30 "$E2E_RUN/cargo-build.log" >&2
        e2e_die "cargo build --release failed"
    fi
    local b
    for b in microvm-workspaces-generator microvm-workspaces-prepare microvm-link; do
        [ -x "$E2E_TARGET/release/$b" ] || e2e_die "cargo build did not produce $b"
    done
    e2e_log "project built in $(e2e_since "$t0")s"
}

# e2e_install_project ROOT: files only; the caller runs daemon-reload
e2e_install_project() {
    local root=$1 rel=$E2E_TARGET/release f
    install -D -m 0755 "$rel/microvm-workspaces-generator" "$root/usr/lib/systemd/system-generators/microvm-workspaces-generator"
    install -D -m 0755 "$rel/microvm-workspaces-prepare" "$root$E2E_PREPARE_PATH"
    install -D -m 0755 "$rel/microvm-link" "$root/usr/bin/microvm-link"
    # the project's units/: unit files go to the vendor unit dir (its *.conf.in
    # are the generator's templates, compiled into it)
    if [ -d "$E2E_REPO/units" ]; then
        for f in "$E2E_REPO"/units/*; do
            case $f in
                *.service|*.socket|*.timer|*.path|*.target|*.mount|*.slice)
                    install -D -m 0644 "$f" "$root/usr/lib/systemd/system/$(basename "$f")" ;;
            esac
        done
    fi
}
