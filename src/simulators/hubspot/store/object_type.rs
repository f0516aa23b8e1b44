//! The CRM object types the HubSpot simulator serves (contacts, companies,
//! deals): how URLs, webhooks and errors name them, and which properties
//! each has, returns by default and maintains itself. Handlers resolve
//! the `{type}` path segment here before touching the store.

/// The CRM object types the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectType {
    Contacts,
    Companies,
    Deals,
}

impl ObjectType {
    pub const ALL: [ObjectType; 3] = [
        ObjectType::Contacts,
        ObjectType::Companies,
        ObjectType::Deals,
    ];

    /// The path segment, by name or by HubSpot's object type id.
    pub fn from_path(s: &str) -> Option<Self> {
        match s {
            "contacts" | "contact" | "0-1" => Some(ObjectType::Contacts),
            "companies" | "company" | "0-2" => Some(ObjectType::Companies),
            "deals" | "deal" | "0-3" => Some(ObjectType::Deals),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contacts",
            ObjectType::Companies => "companies",
            ObjectType::Deals => "deals",
        }
    }

    /// Prefix of webhook subscription types (`contact.creation`).
    pub fn singular(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contact",
            ObjectType::Companies => "company",
            ObjectType::Deals => "deal",
        }
    }

    /// As HubSpot names it in error messages (`CONTACT`).
    pub fn upper(self) -> &'static str {
        match self {
            ObjectType::Contacts => "CONTACT",
            ObjectType::Companies => "COMPANY",
            ObjectType::Deals => "DEAL",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// Properties every portal has for this type (writable).
    pub fn standard_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &[
                "email",
                "firstname",
                "lastname",
                "phone",
                "company",
                "address",
                "city",
                "state",
                "zip",
                "country",
                "website",
                "jobtitle",
                "lifecyclestage",
            ],
            ObjectType::Companies => &[
                "name",
                "domain",
                "phone",
                "address",
                "city",
                "state",
                "zip",
                "country",
                "industry",
                "description",
            ],
            ObjectType::Deals => &[
                "dealname",
                "amount",
                "dealstage",
                "pipeline",
                "closedate",
                "description",
            ],
        }
    }

    /// Properties returned when a request names none.
    pub fn default_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            ObjectType::Companies => &[
                "createdate",
                "domain",
                "hs_lastmodifieddate",
                "hs_object_id",
                "name",
            ],
            ObjectType::Deals => &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ],
        }
    }

    /// Properties HubSpot maintains itself.
    pub fn system_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &[
                "hs_object_id",
                "createdate",
                "hs_lastmodifieddate",
                "lastmodifieddate",
            ],
            _ => &["hs_object_id", "createdate", "hs_lastmodifieddate"],
        }
    }

    /// Properties holding a datetime (compared as epoch milliseconds).
    pub fn is_date_property(name: &str) -> bool {
        matches!(
            name,
            "createdate" | "hs_lastmodifieddate" | "lastmodifieddate" | "closedate"
        )
    }

    pub(super) fn default_required(self) -> Vec<String> {
        match self {
            ObjectType::Contacts => vec![],
            ObjectType::Companies => vec!["name".into()],
            ObjectType::Deals => vec!["dealname".into()],
        }
    }
}
