//! `user`, `role` and `auth`: etcdctl 3.4's commands, arguments, errors and
//! output (`simple`, and `json`, which prints the response as etcd's
//! gRPC gateway would).

use std::io::Write;

use clap::{Args, Subcommand};
use etcd_client::{Client, Permission, PermissionType, RoleRevokePermissionOptions, UserAddOptions};

use super::{Ctx, flush, prefix_end};
use crate::error::CtlError;
use crate::printer::Format;
use crate::printer::json;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Adds a new user
    Add(UserAddArgs),
    /// Deletes a user
    Delete(NamesArgs),
    /// Gets detailed information of a user
    Get(UserGetArgs),
    /// Lists all users
    List(NamesArgs),
    /// Changes password of user
    Passwd(PasswdArgs),
    /// Grants a role to a user
    #[command(name = "grant-role")]
    GrantRole(NamesArgs),
    /// Revokes a role from a user
    #[command(name = "revoke-role")]
    RevokeRole(NamesArgs),
}

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Adds a new role
    Add(NamesArgs),
    /// Deletes a role
    Delete(NamesArgs),
    /// Gets detailed information of a role
    Get(NamesArgs),
    /// Lists all roles
    List(NamesArgs),
    /// Grants a key to a role
    #[command(name = "grant-permission")]
    GrantPermission(PermArgs),
    /// Revokes a key from a role
    #[command(name = "revoke-permission")]
    RevokePermission(PermArgs),
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Enables authentication
    Enable,
    /// Disables authentication
    Disable,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UserAddArgs {
    args: Vec<String>,
    /// Read password from stdin instead of interactive terminal
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    interactive: bool,
    /// Create a user without password (CN based auth only)
    #[arg(long = "no-password")]
    no_password: bool,
}

#[derive(Args, Debug)]
pub struct UserGetArgs {
    args: Vec<String>,
    /// Show permissions of roles granted to the user
    #[arg(long)]
    detail: bool,
}

#[derive(Args, Debug)]
pub struct PasswdArgs {
    args: Vec<String>,
    /// If true, read password from stdin instead of interactive terminal
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    interactive: bool,
}

#[derive(Args, Debug)]
pub struct PermArgs {
    args: Vec<String>,
    /// Grant or revoke a prefix permission
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    prefix: bool,
    /// Grant or revoke a permission of keys greater than or equal to the given key using byte compare
    #[arg(long = "from-key", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    from_key: bool,
}

/// etcdctl's `fmt.Scanf("%s")`: the first word on stdin.
fn scan_word() -> Result<String, CtlError> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.split_whitespace().next().unwrap_or_default().to_owned())
}

/// etcdctl's interactive password: asked twice, the same both times.
fn read_password_interactive(name: &str) -> Result<String, CtlError> {
    let ask = |prompt: String| -> Result<String, CtlError> {
        eprint!("{prompt}");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let first = ask(format!("Password of {name}: "))?;
    if first.is_empty() {
        return Err(CtlError::bad_args("empty password"));
    }
    let again = ask(format!("Type password of {name} again for confirmation: "))?;
    if first != again {
        return Err(CtlError::bad_args("given passwords are different"));
    }
    Ok(first)
}

/// etcdctl's permission type: READ, WRITE or READWRITE, any case.
fn perm_type(s: &str) -> Result<PermissionType, CtlError> {
    match s.to_uppercase().as_str() {
        "READ" => Ok(PermissionType::Read),
        "WRITE" => Ok(PermissionType::Write),
        "READWRITE" => Ok(PermissionType::Readwrite),
        _ => Err(CtlError::bad_args(format!("invalid permission type: {s}"))),
    }
}

/// etcdctl's `permRange`: the key and range end a permission covers.
fn perm_range(args: &[String], prefix: bool, from_key: bool) -> Result<(Vec<u8>, Vec<u8>), CtlError> {
    let key = args[0].as_bytes().to_vec();
    if key.is_empty() {
        if prefix && from_key {
            return Err(CtlError::bad_args("--from-key and --prefix flags are mutually exclusive"));
        }
        // The whole key space: ["\x00", "\x00") with either flag.
        let end = if prefix || from_key { vec![0] } else { Vec::new() };
        return Ok((vec![0], end));
    }
    if args.len() == 1 {
        if prefix {
            if from_key {
                return Err(CtlError::bad_args("--from-key and --prefix flags are mutually exclusive"));
            }
            return Ok((key.clone(), prefix_end(&key)));
        }
        return Ok((key, if from_key { vec![0] } else { Vec::new() }));
    }
    if prefix {
        return Err(CtlError::bad_args("unexpected endkey argument with --prefix flag"));
    }
    if from_key {
        return Err(CtlError::bad_args("unexpected endkey argument with --from-key flag"));
    }
    Ok((key, args[1].as_bytes().to_vec()))
}

fn check_format(ctx: &Ctx) -> Result<(), CtlError> {
    match ctx.printer.format {
        Format::Simple | Format::Json => Ok(()),
        _ => Err(CtlError::bad_feature("raftkvctl user, role and auth print the simple and json formats only")),
    }
}

/// Prints `json` for `-w json`, `simple` otherwise.
fn print(ctx: &Ctx, json: impl FnOnce() -> json::Json, simple: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<(), CtlError> {
    let mut out = ctx.stdout();
    if ctx.printer.format == Format::Json {
        json::print(&mut out, json())?;
    } else {
        simple(&mut out)?;
    }
    flush(&mut out)
}

/// etcdctl's RoleGet in the simple format.
fn write_role(w: &mut dyn Write, role: &str, perms: &[(i32, Vec<u8>, Vec<u8>)]) -> std::io::Result<()> {
    writeln!(w, "Role {role}")?;
    let range = |w: &mut dyn Write, key: &[u8], end: &[u8]| -> std::io::Result<()> {
        let (k, e) = (String::from_utf8_lossy(key), String::from_utf8_lossy(end));
        if end.is_empty() {
            return writeln!(w, "\t{k}");
        }
        if end != [0] {
            write!(w, "\t[{k}, {e})")?;
        } else {
            write!(w, "\t[{k}, <open ended>")?;
        }
        if prefix_end(key) == end {
            write!(w, " (prefix {k})")?;
        }
        writeln!(w)
    };
    writeln!(w, "KV Read:")?;
    for (t, key, end) in perms.iter().filter(|(t, ..)| *t == 0 || *t == 2) {
        let _ = t;
        range(w, key, end)?;
    }
    writeln!(w, "KV Write:")?;
    for (t, key, end) in perms.iter().filter(|(t, ..)| *t == 1 || *t == 2) {
        let _ = t;
        range(w, key, end)?;
    }
    Ok(())
}

fn one(args: &[String], what: &str) -> Result<String, CtlError> {
    match args {
        [name] => Ok(name.clone()),
        _ => Err(CtlError::bad_args(what.to_owned())),
    }
}

fn two(args: &[String], what: &str) -> Result<(String, String), CtlError> {
    match args {
        [a, b] => Ok((a.clone(), b.clone())),
        _ => Err(CtlError::bad_args(what.to_owned())),
    }
}

async fn connect(ctx: &Ctx) -> Result<Client, CtlError> {
    ctx.conn.connect().await
}

pub async fn user(cmd: UserCommand, ctx: &Ctx) -> Result<(), CtlError> {
    check_format(ctx)?;
    match cmd {
        UserCommand::Add(a) => {
            let arg = one(&a.args, "user add command requires user name as its argument")?;
            let (name, password, options) = if a.no_password {
                (arg, String::new(), Some(UserAddOptions::new().with_no_pwd()))
            } else {
                match arg.split_once(':') {
                    Some((user, password)) => {
                        if user.is_empty() {
                            return Err(CtlError::bad_args("empty user name is not allowed"));
                        }
                        (user.to_owned(), password.to_owned(), None)
                    }
                    None if a.interactive => {
                        let password = read_password_interactive(&arg)?;
                        (arg, password, None)
                    }
                    None => (arg, scan_word()?, None),
                }
            };
            let client = connect(ctx).await?;
            let resp = ctx
                .conn
                .call(|| {
                    let mut auth = client.auth_client();
                    let (name, password, options) = (name.clone(), password.clone(), options.clone());
                    async move { auth.user_add(name, password, options).await }
                })
                .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "User {name} created"))
        }
        UserCommand::Delete(a) => {
            let name = one(&a.args, "user delete command requires user name as its argument")?;
            let client = connect(ctx).await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let name = name.clone();
                async move { auth.user_delete(name).await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "User {name} deleted"))
        }
        UserCommand::Get(a) => {
            let name = one(&a.args, "user get command requires user name as its argument")?;
            let client = connect(ctx).await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let name = name.clone();
                async move { auth.user_get(name).await }
            })
            .await?;
            if a.detail && ctx.printer.format == Format::Simple {
                let mut out = ctx.stdout();
                writeln!(out, "User: {name}")?;
                for role in resp.roles() {
                    writeln!(out)?;
                    let got = ctx.conn.call(|| {
                        let mut auth = client.auth_client();
                        let role = role.clone();
                        async move { auth.role_get(role).await }
                    })
                    .await?;
                    write_role(&mut out, role, &perms(&got.0))?;
                }
                return flush(&mut out);
            }
            print(ctx, || json::user_get(&resp.0), |w| {
                write!(w, "User: {name}\nRoles:")?;
                for role in resp.roles() {
                    write!(w, " {role}")?;
                }
                writeln!(w)
            })
        }
        UserCommand::List(a) => {
            if !a.args.is_empty() {
                return Err(CtlError::bad_args("user list command requires no arguments"));
            }
            let client = connect(ctx).await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                async move { auth.user_list().await }
            })
            .await?;
            print(ctx, || json::user_list(&resp.0), |w| resp.users().iter().try_for_each(|u| writeln!(w, "{u}")))
        }
        UserCommand::Passwd(a) => {
            let name = one(&a.args, "user passwd command requires user name as its argument")?;
            let password = if a.interactive { read_password_interactive(&name)? } else { scan_word()? };
            let client = connect(ctx).await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let (name, password) = (name.clone(), password.clone());
                async move { auth.user_change_password(name, password).await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Password updated"))
        }
        UserCommand::GrantRole(a) => {
            let (name, role) = two(&a.args, "user grant command requires user name and role name as its argument")?;
            let client = connect(ctx).await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let (name, role) = (name.clone(), role.clone());
                async move { auth.user_grant_role(name, role).await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Role {role} is granted to user {name}"))
        }
        UserCommand::RevokeRole(a) => {
            let (name, role) = two(&a.args, "user revoke-role requires user name and role name as its argument")?;
            let client = connect(ctx).await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let (name, role) = (name.clone(), role.clone());
                async move { auth.user_revoke_role(name, role).await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Role {role} is revoked from user {name}"))
        }
    }
}

/// A role's permissions as (type, key, range end).
fn perms(r: &etcd_client::proto::PbAuthRoleGetResponse) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
    r.perm.iter().map(|p| (p.perm_type, p.key.clone(), p.range_end.clone())).collect()
}

pub async fn role(cmd: RoleCommand, ctx: &Ctx) -> Result<(), CtlError> {
    check_format(ctx)?;
    let client = || connect(ctx);
    match cmd {
        RoleCommand::Add(a) => {
            let name = one(&a.args, "role add command requires role name as its argument")?;
            let client = client().await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let name = name.clone();
                async move { auth.role_add(name).await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Role {name} created"))
        }
        RoleCommand::Delete(a) => {
            let name = one(&a.args, "role delete command requires role name as its argument")?;
            let client = client().await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let name = name.clone();
                async move { auth.role_delete(name).await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Role {name} deleted"))
        }
        RoleCommand::Get(a) => {
            let name = one(&a.args, "role get command requires role name as its argument")?;
            let client = client().await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let name = name.clone();
                async move { auth.role_get(name).await }
            })
            .await?;
            print(ctx, || json::role_get(&resp.0), |w| write_role(w, &name, &perms(&resp.0)))
        }
        RoleCommand::List(a) => {
            if !a.args.is_empty() {
                return Err(CtlError::bad_args("role list command requires no arguments"));
            }
            let client = client().await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                async move { auth.role_list().await }
            })
            .await?;
            print(ctx, || json::role_list(&resp.0), |w| resp.roles().iter().try_for_each(|r| writeln!(w, "{r}")))
        }
        RoleCommand::GrantPermission(a) => {
            if a.args.len() < 3 {
                return Err(CtlError::bad_args("role grant command requires role name, permission type, and key [endkey] as its argument"));
            }
            let kind = perm_type(&a.args[1])?;
            let (key, end) = perm_range(&a.args[2..], a.prefix, a.from_key)?;
            let name = a.args[0].clone();
            let client = client().await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let perm = Permission::new(kind, key.clone()).with_range_end(end.clone());
                let name = name.clone();
                async move { auth.role_grant_permission(name, perm).await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Role {name} updated"))
        }
        RoleCommand::RevokePermission(a) => {
            if a.args.len() < 2 {
                return Err(CtlError::bad_args("role revoke-permission command requires role name and key [endkey] as its argument"));
            }
            let (key, end) = perm_range(&a.args[1..], a.prefix, a.from_key)?;
            let name = a.args[0].clone();
            let client = client().await?;
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                let options = RoleRevokePermissionOptions::new().with_range_end(end.clone());
                let (name, key) = (name.clone(), key.clone());
                async move { auth.role_revoke_permission(name, key, Some(options)).await }
            })
            .await?;
            let (k, e) = (String::from_utf8_lossy(&key), String::from_utf8_lossy(&end));
            print(ctx, || json::header_only(&resp.0.header), |w| {
                if end.is_empty() {
                    writeln!(w, "Permission of key {k} is revoked from role {name}")
                } else if end == [0] {
                    writeln!(w, "Permission of range [{k}, <open ended> is revoked from role {name}")
                } else {
                    writeln!(w, "Permission of range [{k}, {e}) is revoked from role {name}")
                }
            })
        }
    }
}

pub async fn auth(cmd: AuthCommand, ctx: &Ctx) -> Result<(), CtlError> {
    check_format(ctx)?;
    let client = connect(ctx).await?;
    match cmd {
        AuthCommand::Enable => {
            // As etcdctl: a missing root role is added and granted to root,
            // then enabling is asked again.
            loop {
                let enabled = ctx.conn.call(|| {
                    let mut auth = client.auth_client();
                    async move { auth.auth_enable().await }
                })
                .await;
                match enabled {
                    Ok(resp) => return print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Authentication Enabled")),
                    Err(e) if e.to_string().contains("etcdserver: root user does not have root role") => {
                        ctx.conn.call(|| {
                            let mut auth = client.auth_client();
                            async move { auth.role_add("root").await }
                        })
                        .await?;
                        ctx.conn.call(|| {
                            let mut auth = client.auth_client();
                            async move { auth.user_grant_role("root", "root").await }
                        })
                        .await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        AuthCommand::Disable => {
            let resp = ctx.conn.call(|| {
                let mut auth = client.auth_client();
                async move { auth.auth_disable().await }
            })
            .await?;
            print(ctx, || json::header_only(&resp.0.header), |w| writeln!(w, "Authentication Disabled"))
        }
    }
}
