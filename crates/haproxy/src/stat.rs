//! Parsing what HAProxy reports: `show stat` CSV into [`ServerStat`]s (by the
//! header line's column names, which are stable across versions, not by
//! position, which is not) and `show info`'s `Version:` into [`Version`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// HAProxy's version, e.g. `2.6.12-1+deb12u4` → 2.6.12. Ordered by
/// (major, minor, patch); the text after them is kept for display only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    raw: String,
}

impl Version {
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// The `Version:` line of `show info`.
    pub fn from_show_info(info: &str) -> Option<Version> {
        info.lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let raw = s.trim();
        let numeric: String = raw
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').map(|p| p.parse::<u32>());
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor)), patch) => Ok(Version {
                major,
                minor,
                patch: match patch {
                    Some(Ok(p)) => p,
                    _ => 0,
                },
                raw: raw.to_string(),
            }),
            _ => Err(Error::InvalidArgument {
                what: "HAProxy version",
                value: raw.to_string(),
                why: "expected MAJOR.MINOR[.PATCH]",
            }),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A server's `status` column. HAProxy prints `UP 1/3` while an UP server
/// is failing checks (or has just been made ready and not yet passed one),
/// `DOWN 1/2` while a DOWN one is passing them, `no check` for a server
/// without checks that takes traffic, `MAINT (via b/s)` and the like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Up,
    UpGoingDown,
    Down,
    DownGoingUp,
    NoLb,
    Drain,
    Maint,
    NoCheck,
    Other(String),
}

impl Status {
    pub fn parse(text: &str) -> Status {
        let t = text.trim();
        match t {
            "UP" => Status::Up,
            "DOWN" => Status::Down,
            "no check" => Status::NoCheck,
            _ if t.starts_with("UP ") => Status::UpGoingDown,
            _ if t.starts_with("DOWN ") => Status::DownGoingUp,
            _ if t.starts_with("NOLB") => Status::NoLb,
            _ if t.starts_with("DRAIN") => Status::Drain,
            _ if t.starts_with("MAINT") => Status::Maint,
            _ => Status::Other(t.to_string()),
        }
    }
}

/// One server's line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub backend: String,
    pub name: String,
    pub status: Status,
    /// The `status` column as printed (`UP 1/3`, `MAINT (via web/a)`).
    pub status_text: String,
    /// Current sessions (in-flight requests); a drained server is done at 0.
    pub scur: u64,
    /// Requests queued on this server.
    pub qcur: u64,
    /// Sessions since the start (or `clear counters`).
    pub stot: u64,
    /// Effective weight (0 in drain); `uweight` is the one set by the user.
    pub weight: u32,
    pub uweight: Option<u32>,
    /// `L4OK`, `L7OK`, `L4CON`, `INI` (not checked yet), … None without checks.
    pub check_status: Option<String>,
    /// The check's text, e.g. `Layer4 connection problem`.
    pub check_desc: Option<String>,
    /// Answers by status class (`hrsp_1xx` … `hrsp_5xx`).
    pub hrsp_1xx: u64,
    pub hrsp_2xx: u64,
    pub hrsp_3xx: u64,
    pub hrsp_4xx: u64,
    pub hrsp_5xx: u64,
    pub req_tot: u64,
    /// Connection and response errors.
    pub econ: u64,
    pub eresp: u64,
    /// Average response and total times over the last 1024 requests.
    pub rtime: Duration,
    pub ttime: Duration,
    /// `ip:port` (IPv6 as `[::1]:80`).
    pub addr: Option<String>,
    /// Time since the last UP/DOWN transition.
    pub lastchg: Option<Duration>,
}

impl ServerStat {
    /// Status starts with `UP` (including `UP 1/3`, failing checks).
    pub fn is_up(&self) -> bool {
        matches!(self.status, Status::Up | Status::UpGoingDown)
    }

    /// Its last health check succeeded (`L4OK`, `L6OK`, `L7OK`, `L7OKC`).
    pub fn check_passed(&self) -> bool {
        matches!(
            self.check_status.as_deref(),
            Some("L4OK" | "L6OK" | "L7OK" | "L7OKC")
        )
    }

    /// Taking traffic with nothing pending: fully `UP` after a passed check,
    /// or `no check` (a server without checks is trusted once ready).
    pub fn is_settled_up(&self) -> bool {
        match self.status {
            Status::Up => self.check_status.is_none() || self.check_passed(),
            Status::NoCheck => true,
            _ => false,
        }
    }
}

/// The server rows of a `show stat` answer (frontends and backends are
/// skipped). Columns are found by name in the `# pxname,svname,…` header;
/// `pxname`, `svname`, `status` and `scur` must be there.
/// The `algo` column of `backend`'s own row (`roundrobin`, `static-rr`,
/// …), when HAProxy prints it.
pub fn parse_backend_algo(csv: &str, backend: &str) -> Option<String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next()?.strip_prefix('#')?;
    let columns: Vec<&str> = header.trim().split(',').map(str::trim).collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (px, sv, algo) = (col("pxname")?, col("svname")?, col("algo")?);
    lines
        .map(split_csv_line)
        .find(|f| {
            f.get(px).is_some_and(|p| p == backend) && f.get(sv).is_some_and(|s| s == "BACKEND")
        })
        .and_then(|f| f.get(algo).cloned())
        .filter(|a| !a.is_empty())
}

pub fn parse_servers(csv: &str) -> Result<Vec<ServerStat>, &'static str> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or("no `# pxname,…` header line")?;
    let columns: Vec<&str> = header.trim().split(',').map(str::trim).collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(status), Some(scur)) =
        (col("pxname"), col("svname"), col("status"), col("scur"))
    else {
        return Err("the header lacks pxname, svname, status or scur");
    };
    let kind = col("type");
    let find = |name: &str| col(name);
    let idx = Indexes {
        qcur: find("qcur"),
        stot: find("stot"),
        weight: find("weight"),
        uweight: find("uweight"),
        check_status: find("check_status"),
        check_desc: find("check_desc"),
        hrsp_1xx: find("hrsp_1xx"),
        hrsp_2xx: find("hrsp_2xx"),
        hrsp_3xx: find("hrsp_3xx"),
        hrsp_4xx: find("hrsp_4xx"),
        hrsp_5xx: find("hrsp_5xx"),
        req_tot: find("req_tot"),
        econ: find("econ"),
        eresp: find("eresp"),
        rtime: find("rtime"),
        ttime: find("ttime"),
        addr: find("addr"),
        lastchg: find("lastchg"),
    };
    let mut servers = Vec::new();
    for line in lines {
        let fields = split_csv_line(line);
        let get = |i: usize| fields.get(i).map(String::as_str).unwrap_or("");
        let name = get(sv);
        let is_server = match kind {
            Some(k) => get(k) == "2",
            None => name != "FRONTEND" && name != "BACKEND",
        };
        if !is_server {
            continue;
        }
        let text = |i: Option<usize>| i.map(get).filter(|v| !v.is_empty()).map(str::to_string);
        let num = |i: Option<usize>| i.and_then(|i| get(i).parse::<u64>().ok());
        let ms = |i: Option<usize>| Duration::from_millis(num(i).unwrap_or(0));
        servers.push(ServerStat {
            backend: get(px).to_string(),
            name: name.to_string(),
            status: Status::parse(get(status)),
            status_text: get(status).to_string(),
            scur: num(Some(scur)).unwrap_or(0),
            qcur: num(idx.qcur).unwrap_or(0),
            stot: num(idx.stot).unwrap_or(0),
            weight: num(idx.weight).unwrap_or(0) as u32,
            uweight: num(idx.uweight).map(|w| w as u32),
            // `* L7OK`: a check is running now; the status is the last one's.
            check_status: text(idx.check_status).map(|c| c.trim_start_matches("* ").to_string()),
            check_desc: text(idx.check_desc),
            hrsp_1xx: num(idx.hrsp_1xx).unwrap_or(0),
            hrsp_2xx: num(idx.hrsp_2xx).unwrap_or(0),
            hrsp_3xx: num(idx.hrsp_3xx).unwrap_or(0),
            hrsp_4xx: num(idx.hrsp_4xx).unwrap_or(0),
            hrsp_5xx: num(idx.hrsp_5xx).unwrap_or(0),
            req_tot: num(idx.req_tot).unwrap_or(0),
            econ: num(idx.econ).unwrap_or(0),
            eresp: num(idx.eresp).unwrap_or(0),
            rtime: ms(idx.rtime),
            ttime: ms(idx.ttime),
            addr: text(idx.addr),
            lastchg: num(idx.lastchg).map(Duration::from_secs),
        });
    }
    Ok(servers)
}

struct Indexes {
    qcur: Option<usize>,
    stot: Option<usize>,
    weight: Option<usize>,
    uweight: Option<usize>,
    check_status: Option<usize>,
    check_desc: Option<usize>,
    hrsp_1xx: Option<usize>,
    hrsp_2xx: Option<usize>,
    hrsp_3xx: Option<usize>,
    hrsp_4xx: Option<usize>,
    hrsp_5xx: Option<usize>,
    req_tot: Option<usize>,
    econ: Option<usize>,
    eresp: Option<usize>,
    rtime: Option<usize>,
    ttime: Option<usize>,
    addr: Option<usize>,
    lastchg: Option<usize>,
}

/// Splits one CSV line. HAProxy quotes a field with `"` when it holds a comma
/// or a quote (a check description can), doubling inner quotes.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => quoted = true,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    // From HAProxy 2.6.12 (`show stat web 4 -1`), trimmed to the columns up to
    // `addr` and reordered in the second sample to prove names, not
    // positions, are used.
    const HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,uweight,";

    fn row(name: &str, status: &str, scur: u32, check: &str, desc: &str, addr: &str) -> String {
        format!(
            "web,{name},0,0,{scur},1,,7,0,0,,0,,0,0,0,0,{status},10,1,0,0,0,12,0,,1,3,1,,5,,2,0,,1,{check},,0,0,6,0,0,1,0,,0,1,7,0,0,,,,,0,,,0,0,3,4,,,,{desc},,3,2,4,,,,{addr},,http,,10,"
        )
    }

    #[test]
    fn parses_server_rows_by_column_name() {
        let csv = format!(
            "{HEADER}\n{}\n{}\n{}\n\n",
            row(
                "handoff-a",
                "UP",
                1,
                "L4OK",
                "Layer4 check passed",
                "127.0.0.1:8001"
            ),
            row("handoff-b", "DRAIN", 0, "", "", "[::1]:8002"),
            row("manual", "no check", 0, "", "", "127.0.0.1:8003"),
        );
        let servers = parse_servers(&csv).unwrap();
        assert_eq!(servers.len(), 3);
        let a = &servers[0];
        assert_eq!((a.backend.as_str(), a.name.as_str()), ("web", "handoff-a"));
        assert_eq!(a.status, Status::Up);
        assert_eq!((a.scur, a.stot, a.weight, a.uweight), (1, 7, 10, Some(10)));
        assert_eq!(a.check_status.as_deref(), Some("L4OK"));
        assert_eq!(a.check_desc.as_deref(), Some("Layer4 check passed"));
        assert_eq!((a.hrsp_2xx, a.hrsp_5xx, a.req_tot), (6, 1, 7));
        assert_eq!(
            (a.rtime, a.ttime),
            (Duration::from_millis(3), Duration::from_millis(4))
        );
        assert_eq!(a.addr.as_deref(), Some("127.0.0.1:8001"));
        assert_eq!(a.lastchg, Some(Duration::from_secs(12)));
        assert!(a.is_up() && a.check_passed() && a.is_settled_up());
        let b = &servers[1];
        assert_eq!(b.status, Status::Drain);
        assert_eq!(b.check_status, None);
        assert_eq!(b.addr.as_deref(), Some("[::1]:8002"));
        assert!(!b.is_up());
        assert!(servers[2].is_settled_up() && !servers[2].is_up());

        // The same server with the columns in another order.
        let csv = "# svname,status,addr,scur,pxname,type\nhandoff-a,MAINT,10.0.0.1:80,0,web,2\nBACKEND,UP,,0,web,1\n";
        let servers = parse_servers(csv).unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].name, "handoff-a");
        assert_eq!(servers[0].status, Status::Maint);
        assert_eq!(servers[0].addr.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(servers[0].check_status, None);
    }

    #[test]
    fn header_only_is_no_servers_and_garbage_is_an_error() {
        assert_eq!(parse_servers(&format!("{HEADER}\n\n")).unwrap(), vec![]);
        assert!(parse_servers("No such proxy.\n").is_err());
        assert!(parse_servers("# pxname,svname\nweb,a\n").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(Status::parse("UP"), Status::Up);
        assert_eq!(Status::parse("UP 1/2"), Status::UpGoingDown);
        assert_eq!(Status::parse("DOWN"), Status::Down);
        assert_eq!(Status::parse("DOWN 1/3"), Status::DownGoingUp);
        assert_eq!(Status::parse("DRAIN (agent)"), Status::Drain);
        assert_eq!(Status::parse("MAINT (via web/a)"), Status::Maint);
        assert_eq!(Status::parse("MAINT (resolution)"), Status::Maint);
        assert_eq!(Status::parse("no check"), Status::NoCheck);
        assert_eq!(Status::parse("NOLB"), Status::NoLb);
        assert_eq!(Status::parse("?"), Status::Other("?".into()));
    }

    #[test]
    fn quoted_csv_fields() {
        assert_eq!(split_csv_line("a,\"b,c\",d"), vec!["a", "b,c", "d"]);
        assert_eq!(split_csv_line("\"x \"\"y\"\"\",,"), vec!["x \"y\"", "", ""]);
    }

    #[test]
    fn versions() {
        let v: Version = "2.6.12-1+deb12u4".parse().unwrap();
        assert_eq!((v.major, v.minor, v.patch), (2, 6, 12));
        assert_eq!(v.to_string(), "2.6.12-1+deb12u4");
        assert!(v.at_least(2, 6) && v.at_least(2, 4) && !v.at_least(2, 7) && !v.at_least(3, 0));
        let dev: Version = "3.0-dev4-1234".parse().unwrap();
        assert_eq!((dev.major, dev.minor, dev.patch), (3, 0, 0));
        assert!(dev.at_least(2, 6));
        assert!(!"2.2.9".parse::<Version>().unwrap().at_least(2, 4));
        assert!("HAProxy".parse::<Version>().is_err());
        let info = "Name: HAProxy\nVersion: 2.4.22-0ubuntu0.22.04.3\nRelease_date: 2023/02/14\n";
        let v = Version::from_show_info(info).unwrap();
        assert_eq!((v.major, v.minor, v.patch), (2, 4, 22));
        assert_eq!(Version::from_show_info("Name: HAProxy\n"), None);
    }
}
