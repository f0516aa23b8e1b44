//! The sObjects the simulator knows: Account, Contact and Opportunity with
//! their standard fields, plus the custom (`__c`) fields the configuration
//! declares. Field names are matched case-insensitively, as Salesforce does.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A field's data type, as `describe` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Id,
    String,
    Textarea,
    Email,
    Phone,
    Url,
    Picklist,
    Double,
    Currency,
    Percent,
    Int,
    Boolean,
    Date,
    Datetime,
    Reference,
}

impl FieldType {
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            FieldType::Double | FieldType::Currency | FieldType::Percent | FieldType::Int
        )
    }
}

/// One field of an sObject.
#[derive(Debug, Clone)]
pub struct FieldDef {
    pub name: String,
    pub label: String,
    pub kind: FieldType,
    /// Must be set on create (`nillable: false` and no default).
    pub required: bool,
    /// Writable by API clients (system fields are not).
    pub writable: bool,
    pub external_id: bool,
    pub unique: bool,
    pub length: Option<usize>,
    /// For references: the sObject pointed at.
    pub reference_to: Option<String>,
    /// For address and name parts: the compound field and its part name
    /// (`BillingCity` → `BillingAddress.City`), as change events report them.
    pub compound: Option<(&'static str, &'static str)>,
}

impl FieldDef {
    fn new(name: &str, label: &str, kind: FieldType) -> Self {
        let length = match kind {
            FieldType::String | FieldType::Picklist | FieldType::Phone => Some(255),
            FieldType::Email => Some(80),
            FieldType::Url => Some(255),
            FieldType::Textarea => Some(32_000),
            _ => None,
        };
        FieldDef {
            name: name.to_string(),
            label: label.to_string(),
            kind,
            required: false,
            writable: true,
            external_id: false,
            unique: false,
            length,
            reference_to: None,
            compound: None,
        }
    }

    fn required(mut self) -> Self {
        self.required = true;
        self
    }

    fn system(mut self) -> Self {
        self.writable = false;
        self
    }

    fn reference(mut self, to: &str) -> Self {
        self.reference_to = Some(to.to_string());
        self
    }

    fn part(mut self, compound: &'static str, part: &'static str) -> Self {
        self.compound = Some((compound, part));
        self
    }

    fn len(mut self, n: usize) -> Self {
        self.length = Some(n);
        self
    }
}

/// A custom field declared in the simulator configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomField {
    /// `Account`, `Contact` or `Opportunity`.
    pub object: String,
    /// API name ending in `__c`, e.g. `Alguna_Id__c`.
    pub name: String,
    #[serde(rename = "type", default = "default_custom_type")]
    pub kind: FieldType,
    #[serde(default)]
    pub external_id: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub required: bool,
}

fn default_custom_type() -> FieldType {
    FieldType::String
}

/// One sObject type.
#[derive(Debug, Clone)]
pub struct ObjectSchema {
    pub name: String,
    pub label: String,
    pub key_prefix: &'static str,
    pub fields: Vec<FieldDef>,
    by_lower: HashMap<String, usize>,
}

impl ObjectSchema {
    fn new(name: &str, label: &str, key_prefix: &'static str, fields: Vec<FieldDef>) -> Self {
        let mut all = system_fields();
        all.extend(fields);
        let mut s = ObjectSchema {
            name: name.to_string(),
            label: label.to_string(),
            key_prefix,
            fields: all,
            by_lower: HashMap::new(),
        };
        s.reindex();
        s
    }

    fn reindex(&mut self) {
        self.by_lower = self
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.to_ascii_lowercase(), i))
            .collect();
    }

    /// The field named `name`, matched case-insensitively.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.by_lower
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.fields[i])
    }

    /// Fields whose values the store indexes: external ids, unique fields,
    /// references and the fields of duplicate rules.
    pub fn indexed(&self, extra: &[String]) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| {
                f.external_id
                    || f.unique
                    || f.kind == FieldType::Reference && f.name != "OwnerId"
                    || extra.iter().any(|e| e.eq_ignore_ascii_case(&f.name))
            })
            .map(|f| f.name.clone())
            .collect()
    }
}

fn system_fields() -> Vec<FieldDef> {
    vec![
        FieldDef::new("Id", "Record ID", FieldType::Id).system(),
        FieldDef::new("IsDeleted", "Deleted", FieldType::Boolean).system(),
        FieldDef::new("CreatedDate", "Created Date", FieldType::Datetime).system(),
        FieldDef::new("CreatedById", "Created By ID", FieldType::Reference)
            .system()
            .reference("User"),
        FieldDef::new(
            "LastModifiedDate",
            "Last Modified Date",
            FieldType::Datetime,
        )
        .system(),
        FieldDef::new(
            "LastModifiedById",
            "Last Modified By ID",
            FieldType::Reference,
        )
        .system()
        .reference("User"),
        FieldDef::new("SystemModstamp", "System Modstamp", FieldType::Datetime).system(),
        FieldDef::new("OwnerId", "Owner ID", FieldType::Reference).reference("User"),
    ]
}

fn address(prefix: &'static str, compound: &'static str) -> Vec<FieldDef> {
    let label = if prefix == "Billing" {
        "Billing"
    } else {
        "Mailing"
    };
    vec![
        FieldDef::new(
            &format!("{prefix}Street"),
            &format!("{label} Street"),
            FieldType::Textarea,
        )
        .len(255)
        .part(compound, "Street"),
        FieldDef::new(
            &format!("{prefix}City"),
            &format!("{label} City"),
            FieldType::String,
        )
        .len(40)
        .part(compound, "City"),
        FieldDef::new(
            &format!("{prefix}State"),
            &format!("{label} State/Province"),
            FieldType::String,
        )
        .len(80)
        .part(compound, "State"),
        FieldDef::new(
            &format!("{prefix}PostalCode"),
            &format!("{label} Zip/Postal Code"),
            FieldType::String,
        )
        .len(20)
        .part(compound, "PostalCode"),
        FieldDef::new(
            &format!("{prefix}Country"),
            &format!("{label} Country"),
            FieldType::String,
        )
        .len(80)
        .part(compound, "Country"),
    ]
}

/// The standard objects with the configured custom fields added.
pub fn build(custom: &[CustomField]) -> Result<Vec<ObjectSchema>, String> {
    let mut account = vec![FieldDef::new("Name", "Account Name", FieldType::String).required()];
    account.extend(address("Billing", "BillingAddress"));
    account.extend([
        FieldDef::new("Phone", "Account Phone", FieldType::Phone).len(40),
        FieldDef::new("Website", "Website", FieldType::Url),
        FieldDef::new("Industry", "Industry", FieldType::Picklist),
        FieldDef::new("AnnualRevenue", "Annual Revenue", FieldType::Currency),
        FieldDef::new("Description", "Account Description", FieldType::Textarea),
    ]);
    let mut contact = vec![
        FieldDef::new("FirstName", "First Name", FieldType::String)
            .len(40)
            .part("Name", "FirstName"),
        FieldDef::new("LastName", "Last Name", FieldType::String)
            .len(80)
            .required()
            .part("Name", "LastName"),
        FieldDef::new("Email", "Email", FieldType::Email),
        FieldDef::new("Phone", "Business Phone", FieldType::Phone).len(40),
        FieldDef::new("Title", "Title", FieldType::String).len(128),
        FieldDef::new("AccountId", "Account ID", FieldType::Reference).reference("Account"),
    ];
    contact.extend(address("Mailing", "MailingAddress"));
    let opportunity = vec![
        FieldDef::new("Name", "Name", FieldType::String)
            .len(120)
            .required(),
        FieldDef::new("StageName", "Stage", FieldType::Picklist).required(),
        FieldDef::new("CloseDate", "Close Date", FieldType::Date).required(),
        FieldDef::new("Amount", "Amount", FieldType::Currency),
        FieldDef::new("Probability", "Probability (%)", FieldType::Percent),
        FieldDef::new("AccountId", "Account ID", FieldType::Reference).reference("Account"),
        FieldDef::new("Description", "Description", FieldType::Textarea),
    ];
    let mut objects = vec![
        ObjectSchema::new("Account", "Account", "001", account),
        ObjectSchema::new("Contact", "Contact", "003", contact),
        ObjectSchema::new("Opportunity", "Opportunity", "006", opportunity),
    ];
    for c in custom {
        if !c.name.ends_with("__c") {
            return Err(format!(
                "custom field {}.{}: API name must end in __c",
                c.object, c.name
            ));
        }
        let Some(obj) = objects
            .iter_mut()
            .find(|o| o.name.eq_ignore_ascii_case(&c.object))
        else {
            return Err(format!(
                "custom field {}.{}: unknown sObject {:?}",
                c.object, c.name, c.object
            ));
        };
        if obj.field(&c.name).is_some() {
            return Err(format!(
                "custom field {}.{}: declared twice",
                c.object, c.name
            ));
        }
        let mut f = FieldDef::new(&c.name, c.name.trim_end_matches("__c"), c.kind);
        f.external_id = c.external_id;
        f.unique = c.unique;
        f.required = c.required;
        obj.fields.push(f);
        obj.reindex();
    }
    Ok(objects)
}
