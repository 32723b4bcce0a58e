// HL7 v2 as a tree: segments, their fields with names (HL7 v2.5.1, the segments of SIU and
// ACK messages), components and repetitions.
const NAMES = {
  MSH: ["Field Separator", "Encoding Characters", "Sending Application", "Sending Facility",
    "Receiving Application", "Receiving Facility", "Date/Time of Message", "Security",
    "Message Type", "Message Control ID", "Processing ID", "Version ID", "Sequence Number",
    "Continuation Pointer", "Accept Acknowledgment Type", "Application Acknowledgment Type",
    "Country Code", "Character Set", "Principal Language of Message"],
  EVN: ["Event Type Code", "Recorded Date/Time", "Date/Time Planned Event",
    "Event Reason Code", "Operator ID", "Event Occurred"],
  SCH: ["Placer Appointment ID", "Filler Appointment ID", "Occurrence Number",
    "Placer Group Number", "Schedule ID", "Event Reason", "Appointment Reason",
    "Appointment Type", "Appointment Duration", "Appointment Duration Units",
    "Appointment Timing Quantity", "Placer Contact Person", "Placer Contact Phone Number",
    "Placer Contact Address", "Placer Contact Location", "Filler Contact Person",
    "Filler Contact Phone Number", "Filler Contact Address", "Filler Contact Location",
    "Entered By Person", "Entered By Phone Number", "Entered By Location",
    "Parent Placer Appointment ID", "Parent Filler Appointment ID", "Filler Status Code",
    "Placer Order Number", "Filler Order Number"],
  NTE: ["Set ID", "Source of Comment", "Comment", "Comment Type"],
  PID: ["Set ID", "Patient ID", "Patient Identifier List", "Alternate Patient ID",
    "Patient Name", "Mother's Maiden Name", "Date/Time of Birth", "Administrative Sex",
    "Patient Alias", "Race", "Patient Address", "County Code", "Phone Number - Home",
    "Phone Number - Business", "Primary Language", "Marital Status", "Religion",
    "Patient Account Number", "SSN Number", "Driver's License Number", "Mother's Identifier",
    "Ethnic Group", "Birth Place", "Multiple Birth Indicator", "Birth Order", "Citizenship",
    "Veterans Military Status", "Nationality", "Patient Death Date and Time",
    "Patient Death Indicator"],
  PV1: ["Set ID", "Patient Class", "Assigned Patient Location", "Admission Type",
    "Preadmit Number", "Prior Patient Location", "Attending Doctor", "Referring Doctor",
    "Consulting Doctor", "Hospital Service"],
  RGS: ["Set ID", "Segment Action Code", "Resource Group ID"],
  AIS: ["Set ID", "Segment Action Code", "Universal Service Identifier", "Start Date/Time",
    "Start Date/Time Offset", "Start Date/Time Offset Units", "Duration", "Duration Units",
    "Allow Substitution Code", "Filler Status Code"],
  AIG: ["Set ID", "Segment Action Code", "Resource ID", "Resource Type", "Resource Group",
    "Resource Quantity", "Resource Quantity Units", "Start Date/Time", "Start Date/Time Offset",
    "Start Date/Time Offset Units", "Duration", "Duration Units", "Allow Substitution Code",
    "Filler Status Code"],
  AIL: ["Set ID", "Segment Action Code", "Location Resource ID", "Location Type Code",
    "Location Group", "Start Date/Time", "Start Date/Time Offset",
    "Start Date/Time Offset Units", "Duration", "Duration Units", "Allow Substitution Code",
    "Filler Status Code"],
  AIP: ["Set ID", "Segment Action Code", "Personnel Resource ID", "Resource Type",
    "Resource Group", "Start Date/Time", "Start Date/Time Offset",
    "Start Date/Time Offset Units", "Duration", "Duration Units", "Allow Substitution Code",
    "Filler Status Code"],
  MSA: ["Acknowledgment Code", "Message Control ID", "Text Message",
    "Expected Sequence Number", "Delayed Acknowledgment Type", "Error Condition"],
  ERR: ["Error Code and Location", "Error Location", "HL7 Error Code", "Severity",
    "Application Error Code", "Application Error Parameter", "Diagnostic Information",
    "User Message"],
};

export function fieldName(segment, number) {
  const names = NAMES[segment];
  return (names && names[number - 1]) || "";
}

export function segmentsOf(text) {
  return text.split(/\r\n|\r|\n/).filter((s) => s.trim() !== "");
}

export function looksLikeHl7(text) {
  return /^MSH./.test(text);
}

// [{segment, fields: [{number, name, value, components: [[...]] per repetition}]}]
export function parse(text) {
  const segments = segmentsOf(text);
  const fieldSep = segments.length && segments[0].startsWith("MSH") ? segments[0][3] : "|";
  const encoding = segments.length && segments[0].startsWith("MSH")
    ? segments[0].slice(4, 8) : "^~\\&";
  const [componentSep, repetitionSep] = [encoding[0] || "^", encoding[1] || "~"];
  return segments.map((line) => {
    const parts = line.split(fieldSep);
    const name = parts[0];
    const fields = [];
    // MSH-1 is the separator itself, so MSH's n-th part is field n + 1.
    const shift = name === "MSH" ? 1 : 0;
    if (name === "MSH") fields.push({ number: 1, value: fieldSep, repetitions: [[fieldSep]] });
    parts.slice(1).forEach((value, i) => {
      const number = i + 1 + shift;
      const literal = name === "MSH" && number === 2;
      const repetitions = literal ? [[value]]
        : value.split(repetitionSep).map((r) => r.split(componentSep));
      fields.push({ number, value, repetitions });
    });
    return { segment: name, fields: fields.filter((f) => f.value !== "")
      .map((f) => ({ ...f, name: fieldName(name, f.number) })) };
  });
}
