# shellcheck shell=bash
# Where debootstrap fetches the e2e rootfs from: the machine's own apt
# configuration, never a mirror written into the tests (issue 10). A build
# machine may only reach the mirrors its apt is configured for (a local
# mirror, a snapshot, a proxy), so the rootfs comes from exactly those.
#
# apt itself parses the sources (`apt-get indextargets --no-release-info`):
# /etc/apt/sources.list and sources.list.d/*.list (one-line) and *.sources
# (deb822), with [options], Enabled: no, Architectures:, APT_CONFIG and
# Dir::Etc::* honoured as apt-get update would. Needs no downloaded lists.
#
# e2e_apt_source sets
#   E2E_MIRROR    the archive root, e.g. http://deb.debian.org/debian
#   E2E_SUITE     the suite debootstrap installs, e.g. bookworm
#   E2E_KEYRING   the entry's Signed-By keyring file, or empty (debootstrap's
#                 default keyring for the suite then applies)
#   E2E_APT_ENTRY where the entry was found (file:line or file:stanza)
# or fails with one line naming what was looked at and why nothing fits.
# E2E_MIRROR, E2E_SUITE and E2E_KEYRING set in the environment override.
# Sourced after common.sh.

# The entry chosen: a `deb` entry with component main for the native
# architecture, over http, https or file, whose suite debootstrap has a script
# for (so bookworm, not bookworm-updates or bookworm-security). Among those,
# the host's own release (VERSION_CODENAME) first, else the first in apt's
# order.
e2e_apt_source() {
    local arch codename line target id comp a uri suite entry why=() first= mine= SL= SP=
    if [ -n "${E2E_MIRROR:-}" ]; then
        E2E_SUITE=${E2E_SUITE:-$( . /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")}
        [ -n "$E2E_SUITE" ] || e2e_die "E2E_MIRROR is set but the suite is unknown: set E2E_SUITE too"
        E2E_KEYRING=${E2E_KEYRING:-}
        E2E_APT_ENTRY="E2E_MIRROR in the environment"
        return 0
    fi
    command -v apt-get >/dev/null || e2e_die "no apt-get: the e2e rootfs is bootstrapped from this machine's apt sources (or set E2E_MIRROR and E2E_SUITE)"
    arch=$(dpkg --print-architecture) || e2e_die "dpkg --print-architecture failed"
    codename=$( . /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")
    while read -r target id comp a uri suite entry; do
        [ "$target $id $comp $a" = "deb Packages main $arch" ] || continue
        uri=${uri%/}
        case $uri in
            http://*|https://*|file:/*) ;;
            *) why+=("$uri $suite: debootstrap cannot fetch ${uri%%:*} URIs"); continue ;;
        esac
        if [[ $suite == */* || ! -e /usr/share/debootstrap/scripts/$suite ]]; then
            why+=("$uri $suite: not a suite debootstrap can install")
            continue
        fi
        line="$uri $suite $entry"
        [ -n "$first" ] || first=$line
        if [ -n "$codename" ] && [ "$suite" = "$codename" ]; then mine=$line; break; fi
    done < <(apt-get indextargets --no-release-info \
        --format '$(TARGET_OF) $(IDENTIFIER) $(COMPONENT) $(ARCHITECTURE) $(REPO_URI) $(RELEASE) $(SOURCESENTRY)' 2>/dev/null |
        awk '!seen[$0]++')
    line=${mine:-$first}
    if [ -z "$line" ]; then
        eval "$(apt-config shell SL Dir::Etc::SourceList/f SP Dir::Etc::SourceParts/d 2>/dev/null)"
        e2e_die "no apt source usable by debootstrap in ${SL:-/etc/apt/sources.list} or ${SP:-/etc/apt/sources.list.d/} (need a 'deb' entry with component main for $arch over http, https or file, with a release suite such as ${codename:-bookworm})${why:+; seen: $(printf '%s; ' "${why[@]}" | sed 's/; $//')}"
    fi
    read -r E2E_MIRROR E2E_SUITE E2E_APT_ENTRY <<<"$line"
    E2E_KEYRING=${E2E_KEYRING:-$(e2e_apt_keyring "$E2E_APT_ENTRY")} || exit 1
}

# e2e_apt_signed_by FILE:N: the raw Signed-By of entry N of FILE (a line of a
# one-line .list file, a paragraph of a deb822 .sources file, numbered as apt
# numbers them in Sourcesentry), empty when it has none. An inline key
# comes back as its armored text.
e2e_apt_signed_by() {
    local file=${1%:*} n=${1##*:}
    case $file in
        *.sources)
            # paragraphs with at least one non-comment line count, as in apt
            awk -v want="$n" '
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { if (body) { para++; body = 0 } ; next }
                { if (!body) body = 1 }
                para + 1 == want {
                    if (tolower($0) ~ /^signed-by:/) { sub(/^[^:]*:[ \t]*/, ""); grab = 1; if ($0 != "") print; next }
                    if (grab && $0 ~ /^[ \t]/) { sub(/^[ \t]/, ""); if ($0 == ".") $0 = ""; print; next }
                    grab = 0
                }' "$file"
            ;;
        *)
            sed -n "${n}p" "$file" | sed -n 's/^[^[]*\[\([^]]*\)\].*/\1/p' | tr ' \t' '\n\n' |
                sed -n 's/^signed-by=//Ip'
            ;;
    esac
}

# e2e_apt_keyring FILE:N: a keyring file debootstrap (gpgv) can read for that
# entry, or nothing when the entry names none (or only fingerprints, which
# refer to apt's trusted keys: debootstrap's default keyring then applies).
e2e_apt_keyring() {
    local sb k out
    sb=$(e2e_apt_signed_by "$1")
    [ -n "$sb" ] || return 0
    if [[ $sb == *"-----BEGIN PGP PUBLIC KEY BLOCK-----"* ]]; then
        out=$E2E_CACHE/keyring-$(printf '%s' "$sb" | e2e_hash).gpg
        e2e_apt_dearmor "$out" <<<"$sb" || e2e_die "cannot convert the inline Signed-By key of $1 for debootstrap (needs gpg: apt-get install gpg)"
        echo "$out"
        return 0
    fi
    for k in $(tr ',' ' ' <<<"$sb"); do
        [[ $k == /* ]] || continue
        [ -r "$k" ] || e2e_die "the keyring $k named by Signed-By in $1 is not readable"
        case $k in
            *.asc)
                out=$E2E_CACHE/keyring-$(sha256sum < "$k" | e2e_hash).gpg
                e2e_apt_dearmor "$out" < "$k" || e2e_die "cannot convert the armored keyring $k of $1 for debootstrap (needs gpg: apt-get install gpg)"
                echo "$out" ;;
            *) echo "$k" ;;
        esac
        return 0
    done
}

# armored key on stdin -> binary keyring OUT (gpgv reads only binary ones)
e2e_apt_dearmor() {
    command -v gpg >/dev/null || return 1
    mkdir -p "$(dirname "$1")"
    gpg --batch --yes --dearmor -o "$1.tmp.$$" && mv "$1.tmp.$$" "$1"
}

# apt's proxy for debootstrap (which fetches with wget), unless one is set
e2e_apt_proxy_env() {
    local HTTP_P= HTTPS_P=
    eval "$(apt-config shell HTTP_P Acquire::http::Proxy HTTPS_P Acquire::https::Proxy 2>/dev/null)"
    [ -n "${http_proxy:-}" ] || { [ -n "$HTTP_P" ] && [ "$HTTP_P" != DIRECT ] && export http_proxy=$HTTP_P; }
    [ -n "${https_proxy:-}" ] || { [ -n "$HTTPS_P" ] && [ "$HTTPS_P" != DIRECT ] && export https_proxy=$HTTPS_P; }
    return 0
}
