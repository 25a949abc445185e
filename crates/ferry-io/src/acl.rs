//! Windows: the private key protected like mode 0600 on Unix.
//!
//! A key file is created with a protected DACL (no inherited entries) that grants full control to the account
//! that creates it, `SYSTEM` and `Administrators`, and nobody else. Before a key is used its DACL is read back;
//! a file that any other account or group (`Everyone`, `Users`, `Authenticated Users`, another user...) may read
//! is refused with the `icacls` command that fixes it, as a key of mode 0644 is refused on Unix.

use std::ffi::{OsStr, OsString, c_void};
use std::fs::File;
use std::io;
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::os::windows::io::FromRawHandle;
use std::path::Path;
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_SUCCESS, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW,
    SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, ACL_SIZE_INFORMATION, AclSizeInformation, DACL_SECURITY_INFORMATION, GetAce,
    GetAclInformation, GetTokenInformation, INHERIT_ONLY_ACE, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::{CREATE_NEW, FILE_ATTRIBUTE_NORMAL};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// Well-known SIDs that may hold a key: SYSTEM, Administrators, OWNER RIGHTS, CREATOR OWNER.
const TRUSTED: [&str; 4] = ["S-1-5-18", "S-1-5-32-544", "S-1-3-4", "S-1-3-0"];
const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;
const GENERIC_ALL: u32 = 0x1000_0000;
const FILE_READ_DATA: u32 = 0x0001;
const MAXIMUM_ALLOWED: u32 = 0x0200_0000;

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// A buffer `LocalAlloc`ed by Windows, freed on drop.
struct Local(*mut c_void);

impl Drop for Local {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from an API documented to allocate it with LocalAlloc.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// The SID as text (`S-1-5-21-…`).
///
/// # Safety
/// `sid` must point to a valid SID.
unsafe fn sid_string(sid: PSID) -> io::Result<String> {
    let mut out: *mut u16 = null_mut();
    // SAFETY: `sid` is valid (the caller's contract); `out` receives a LocalAlloc'ed string.
    if unsafe { ConvertSidToStringSidW(sid, &mut out) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let _free = Local(out.cast());
    let mut len = 0;
    // SAFETY: `out` is a NUL-terminated UTF-16 string.
    while unsafe { *out.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` units were just read.
    let units = unsafe { std::slice::from_raw_parts(out, len) };
    Ok(OsString::from_wide(units).to_string_lossy().into_owned())
}

/// The SID of the account this process runs as.
pub fn current_user_sid() -> io::Result<String> {
    let mut token: HANDLE = null_mut();
    // SAFETY: the pseudo handle of the current process; `token` receives a handle closed below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u64; 64];
    let mut len = 0u32;
    let size = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
    // SAFETY: `buf` is 8-byte aligned and `size` bytes long; TOKEN_USER fits in 512 bytes.
    let ok = unsafe { GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), size, &mut len) };
    let err = io::Error::last_os_error();
    // SAFETY: `token` was opened above.
    unsafe { CloseHandle(token) };
    if ok == 0 {
        return Err(err);
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into the buffer.
    unsafe {
        let user = &*(buf.as_ptr().cast::<TOKEN_USER>());
        sid_string(user.User.Sid)
    }
}

/// Create `path` (it must not exist) for writing, with a protected DACL that grants full control only to
/// `dacl_sids` (SDDL account aliases such as `SY` or SIDs as text).
pub fn create_with_dacl(path: &Path, dacl_sids: &[&str]) -> io::Result<File> {
    let aces: String = dacl_sids.iter().map(|s| format!("(A;;FA;;;{s})")).collect();
    let sddl = wide(OsStr::new(&format!("D:P{aces}")));
    let mut sd: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'ed descriptor freed below.
    if unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.as_ptr(), SDDL_REVISION_1, &mut sd, null_mut())
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    let _free = Local(sd);
    let attrs = SECURITY_ATTRIBUTES {
        nLength: u32::try_from(std::mem::size_of::<SECURITY_ATTRIBUTES>()).unwrap_or(0),
        lpSecurityDescriptor: sd,
        bInheritHandle: 0,
    };
    let name = wide(path.as_os_str());
    // SAFETY: `name` is NUL-terminated and `attrs` outlives the call.
    let handle = unsafe {
        windows_sys::Win32::Storage::FileSystem::CreateFileW(
            name.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            &attrs,
            CREATE_NEW,
            FILE_ATTRIBUTE_NORMAL,
            null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle owned by nobody else.
    Ok(unsafe { File::from_raw_handle(handle) })
}

/// Create a new private-key file readable and writable only by this account, SYSTEM and Administrators.
pub fn create_owner_only(path: &Path) -> io::Result<File> {
    let me = current_user_sid()?;
    create_with_dacl(path, &[&me, "SY", "BA"])
}

/// The accounts (as SIDs) other than the file's owner, this process's account and the trusted well-known ones
/// that the file's DACL allows to read it; `["S-1-1-0"]` (Everyone) for a file without a DACL.
pub fn foreign_readers(path: &Path) -> io::Result<Vec<String>> {
    let name = wide(path.as_os_str());
    let mut owner: PSID = null_mut();
    let mut dacl: *mut ACL = null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: out-pointers point into `sd`, LocalAlloc'ed and freed by `_free` after their last use.
    let rc = unsafe {
        GetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            null_mut(),
            &mut dacl,
            null_mut(),
            &mut sd,
        )
    };
    if rc != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(i32::try_from(rc).unwrap_or(i32::MAX)));
    }
    let _free = Local(sd);
    if dacl.is_null() {
        return Ok(vec!["S-1-1-0".into()]);
    }
    let mut allowed: Vec<String> = TRUSTED.iter().map(|s| s.to_string()).collect();
    if !owner.is_null() {
        // SAFETY: `owner` points into `sd`.
        allowed.push(unsafe { sid_string(owner)? });
    }
    allowed.push(current_user_sid()?);
    let mut info = ACL_SIZE_INFORMATION { AceCount: 0, AclBytesInUse: 0, AclBytesFree: 0 };
    let size = u32::try_from(std::mem::size_of::<ACL_SIZE_INFORMATION>()).unwrap_or(0);
    // SAFETY: `dacl` points into `sd`; `info` is the size the class asks for.
    if unsafe { GetAclInformation(dacl, (&mut info as *mut ACL_SIZE_INFORMATION).cast(), size, AclSizeInformation) }
        == 0
    {
        return Err(io::Error::last_os_error());
    }
    let mut foreign = Vec::new();
    for i in 0..info.AceCount {
        let mut ace: *mut c_void = null_mut();
        // SAFETY: `i` is below the ACE count of `dacl`.
        if unsafe { GetAce(dacl, i, &mut ace) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every ACE starts with an ACE_HEADER.
        let header = unsafe { &*(ace as *const ACE_HEADER) };
        if header.AceType != ACCESS_ALLOWED_ACE_TYPE || u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0 {
            continue;
        }
        // SAFETY: an access-allowed ACE: mask, then the SID in place of `SidStart`.
        let allowed_ace = unsafe { &*(ace as *const ACCESS_ALLOWED_ACE) };
        // reading the key's bytes is what matters (not its attributes or its ACL)
        let reads = allowed_ace.Mask & (FILE_READ_DATA | GENERIC_READ | GENERIC_ALL | MAXIMUM_ALLOWED) != 0;
        if !reads {
            continue;
        }
        let sid: PSID = (&allowed_ace.SidStart as *const u32).cast_mut().cast();
        // SAFETY: the SID lies inside the ACE.
        let sid = unsafe { sid_string(sid)? };
        if !allowed.contains(&sid) && !foreign.contains(&sid) {
            foreign.push(sid);
        }
    }
    Ok(foreign)
}

/// A readable name for a well-known SID, else the SID itself.
pub fn describe_sid(sid: &str) -> String {
    match sid {
        "S-1-1-0" => "Everyone".into(),
        "S-1-5-32-545" => "Users".into(),
        "S-1-5-11" => "Authenticated Users".into(),
        "S-1-5-32-546" => "Guests".into(),
        "S-1-5-7" => "Anonymous".into(),
        other => other.into(),
    }
}
